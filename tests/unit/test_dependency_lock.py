"""requirements.lock and pyproject.toml agree, and what runs is what is locked.

The image (Dockerfile) and `make test` install the runtime dependencies from the lock,
hash-checked; pyproject keeps the ranges users of the package see. The wire fast path depends
on Celery's and kombu's message format, so the lock must also pin the releases its contract
test ran on (executors/wire.py TESTED_VERSIONS).
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from app.core.tasks.executors.wire import TESTED_VERSIONS
from scripts.harness.dockerfile import PYPROJECT, ROOT, Stage, pip_installs, project_install

LOCK = ROOT / "requirements.lock"
MAKEFILE = ROOT / "Makefile"


@dataclass(frozen=True, slots=True)
class Pin:
    """One `name==version ; marker` entry of the lock with its hashes."""

    name: NormalizedName
    version: Version
    marker: Marker | None
    hashes: tuple[str, ...]

    def applies(self) -> bool:
        """Whether this interpreter and platform install it (the lock is universal)."""
        return self.marker is None or self.marker.evaluate()


def read_lock(path: Path = LOCK) -> dict[NormalizedName, Pin]:
    """The lock's entries, keyed by normalized name; a name locked twice fails the read."""
    pins: dict[NormalizedName, Pin] = {}
    text = path.read_text(encoding="utf-8")
    for block in re.split(r"\n(?=\S)", text):
        logical = re.sub(r"\s*\\\n\s*", " ", block).split("\n", 1)[0].strip()
        if not logical or logical.startswith("#"):
            continue
        requirement_text, *options = re.split(r"\s+(?=--hash=)", logical)
        requirement = Requirement(requirement_text)
        [specifier] = requirement.specifier
        assert specifier.operator == "==", f"not an exact pin: {requirement_text}"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{name} is locked twice"
        pins[name] = Pin(
            name=name,
            version=Version(specifier.version),
            marker=requirement.marker,
            hashes=tuple(option.removeprefix("--hash=") for option in options),
        )
    return pins


def runtime_closure(requirements: list[str]) -> dict[NormalizedName, set[str]]:
    """Every distribution these requirements pull in on this interpreter (with the extras each
    is asked for), read from the installed packages' own metadata."""
    needed: dict[NormalizedName, set[str]] = {}
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        extras = {canonicalize_name(extra) for extra in requirement.extras}
        known = needed.get(name)
        if known is not None and extras <= known:
            continue
        needed[name] = (known or set()) | extras
        for line in importlib.metadata.requires(name) or []:
            dependency = Requirement(line)
            if dependency.marker is None or any(
                dependency.marker.evaluate({"extra": extra}) for extra in {"", *needed[name]}
            ):
                pending.append(dependency)
    return needed


@pytest.fixture(scope="module")
def pins() -> dict[NormalizedName, Pin]:
    return read_lock()


def test_every_entry_is_an_exact_pin_with_hashes(pins: dict[NormalizedName, Pin]) -> None:
    assert pins
    for pin in pins.values():
        assert pin.hashes, f"{pin.name} has no --hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", digest) for digest in pin.hashes)


def test_every_runtime_dependency_is_locked_at_a_version_pyproject_allows(
    pins: dict[NormalizedName, Pin],
) -> None:
    for text in PYPROJECT["dependencies"]:
        requirement = Requirement(text)
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement.name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{requirement.name}=={pin.version} is outside pyproject's {requirement.specifier}: "
            "run `make lock`"
        )


def test_the_lock_holds_exactly_what_pyproject_pulls_in_here(
    pins: dict[NormalizedName, Pin],
) -> None:
    """Nothing missing (a new dependency of a dependency), nothing stale (one no longer
    needed), and the venv runs the locked version of each: the dev extra, installed on top,
    moved none of them."""
    needed = runtime_closure(PYPROJECT["dependencies"])
    applicable = {name for name, pin in pins.items() if pin.applies()}

    assert set(needed) == applicable, "requirements.lock is out of date: run `make lock`"
    installed = {name: Version(importlib.metadata.version(name)) for name in needed}
    assert installed == {name: pins[name].version for name in needed}


def test_the_lock_pins_the_celery_and_kombu_releases_the_wire_contract_ran_on(
    pins: dict[NormalizedName, Pin],
) -> None:
    locked = (str(pins[canonicalize_name("celery")].version), str(pins["kombu"].version))
    assert locked in TESTED_VERSIONS


def test_the_image_installs_the_lock_hash_checked_then_the_project_alone(
    build_stage: Stage,
) -> None:
    installs = pip_installs(build_stage)
    project = project_install(build_stage)
    locked = [
        arguments for _, arguments in installs if "-r" in arguments or "--requirement" in arguments
    ]

    assert len(locked) == 1, installs
    [arguments] = locked
    assert {"--require-hashes", "--only-binary=:all:", "--no-cache-dir"} <= set(arguments)
    assert arguments[arguments.index("-r") + 1] == LOCK.name
    assert installs.index((project[0], arguments)) < installs.index(project)
    assert "--no-deps" in project[1]


def test_make_installs_from_the_lock_and_make_lock_writes_the_command_its_header_names() -> None:
    makefile = MAKEFILE.read_text(encoding="utf-8")
    installs = re.findall(r"^\t\$\(BIN\)/pip install (.*)$", makefile, flags=re.MULTILINE)
    header = LOCK.read_text(encoding="utf-8").splitlines()[:2]

    assert "-q --require-hashes -r requirements.lock" in installs
    assert "-q --no-deps -e ." in installs
    assert re.search(r"^lock:", makefile, flags=re.MULTILINE)
    assert shlex.split(header[1].lstrip("#")) == ["make", "lock"]
    assert '--custom-compile-command "make lock"' in makefile
