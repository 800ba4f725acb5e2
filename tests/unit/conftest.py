"""Fixtures shared by the image tests (test_dockerfile, test_image_build): the parsed
Dockerfile and .dockerignore, and the wheel the build stage would install, built once."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from scripts.harness.dockerfile import (
    DOCKERFILE,
    DOCKERIGNORE,
    VENV,
    Dockerfile,
    IgnoreRule,
    Stage,
    copies,
    parse_dockerfile,
    parse_dockerignore,
    project_install,
    replay_copies,
)


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    """The repository's Dockerfile, parsed."""
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def ignore_rules() -> list[IgnoreRule]:
    """The repository's .dockerignore, parsed."""
    return parse_dockerignore(DOCKERIGNORE.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def build_stage(dockerfile: Dockerfile) -> Stage:
    """The stage the runtime stage takes the venv from."""
    sources = [copy for copy in copies(dockerfile.final) if copy.from_stage is not None]
    venv = [copy for copy in sources if copy.sources == (VENV,) and str(copy.target) == VENV]
    assert venv, f"the runtime stage does not COPY --from=<stage> {VENV} {VENV}"
    assert venv[0].from_stage is not None
    return dockerfile.stage(venv[0].from_stage)


@pytest.fixture(scope="session")
def image_wheel(
    build_stage: Stage, ignore_rules: list[IgnoreRule], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The wheel the build stage installs: its COPY lines replayed from the filtered context,
    then built from the folder its `pip install .` runs in, with build isolation as there."""
    tmp = tmp_path_factory.mktemp("image-build")
    rootfs = tmp / "rootfs"
    replay_copies(build_stage, ignore_rules, rootfs)
    workdir, _ = project_install(build_stage)
    wheels = tmp / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--wheel-dir",
            str(wheels),
            str(rootfs / workdir.relative_to("/")),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = wheels.glob("tasklane-*.whl")
    return wheel


@pytest.fixture(scope="session")
def unpacked_wheel(image_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel unpacked as pip would into site-packages, with nothing of the checkout."""
    site = tmp_path_factory.mktemp("site-packages")
    with zipfile.ZipFile(image_wheel) as archive:
        archive.extractall(site)
    return site
