"""The build stage replayed: the wheel its `pip install .` builds holds every module and the
console script the ENTRYPOINT runs, imports alone under the image's environment, and serves the
default CMD (DESIGN.md §7: no Docker engine here)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from scripts.harness.dockerfile import (
    PYPROJECT,
    ROOT,
    Dockerfile,
    IgnoreRule,
    Stage,
    context_files,
    exec_form,
    image_environment,
    parse_entry_points,
    project_install,
    replay_copies,
    running,
    wait_for_status,
    wheel_member,
)
from scripts.harness.processes import free_port


def test_build_copies_every_file_the_package_build_reads(
    build_stage: Stage, ignore_rules: list[IgnoreRule], tmp_path: Path
) -> None:
    """pyproject's readme and every file of app/ reach the folder `pip install .` runs in."""
    replay_copies(build_stage, ignore_rules, tmp_path)
    workdir, _ = project_install(build_stage)
    project = tmp_path / workdir.relative_to("/")

    copied = {path.relative_to(project).as_posix() for path in project.rglob("*") if path.is_file()}

    assert {"pyproject.toml", PYPROJECT["readme"]} <= copied
    assert set(context_files(ignore_rules, "app")) <= copied


# --- the wheel the build stage installs ------------------------------------------------------


def test_wheel_holds_every_file_of_app_and_nothing_of_the_checkout(
    image_wheel: Path, ignore_rules: list[IgnoreRule]
) -> None:
    """Every module and data file of app/ (app/cli.py, app/workers/celery_app.py, each task
    module under app/tasks/) is installed; tests and scripts are not."""
    with zipfile.ZipFile(image_wheel) as archive:
        names = set(archive.namelist())
    version = PYPROJECT["version"]

    assert {"app/cli.py", "app/workers/celery_app.py"} <= names
    assert {f"app/tasks/{path.name}" for path in (ROOT / "app/tasks").glob("*.py")} <= names
    assert set(context_files(ignore_rules, "app")) <= names
    assert {name.split("/")[0] for name in names} == {"app", f"tasklane-{version}.dist-info"}


def test_wheel_installs_the_tasklane_console_script_the_entrypoint_runs(
    image_wheel: Path, dockerfile: Dockerfile
) -> None:
    [program] = exec_form(dockerfile.final.last("ENTRYPOINT"))

    scripts = parse_entry_points(wheel_member(image_wheel, ".dist-info/entry_points.txt"))[
        "console_scripts"
    ]

    assert scripts[program] == "app.cli:main"


def test_wheel_requires_exactly_the_runtime_dependencies(image_wheel: Path) -> None:
    """`pip install .` installs these and only these: the dev extra stays out of the image."""
    metadata = wheel_member(image_wheel, ".dist-info/METADATA")
    required = {
        line.removeprefix("Requires-Dist:").replace(" ", "")
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }

    assert required == {dependency.replace(" ", "") for dependency in PYPROJECT["dependencies"]}


def test_wheel_imports_alone_under_the_image_environment(
    unpacked_wheel: Path, dockerfile: Dockerfile, tmp_path: Path
) -> None:
    """Every module of the wheel imports from the wheel (not the checkout) with the image's
    ENV, in an empty WORKDIR, and the console script's function runs.

    The metrics folder is left missing, as in a fresh /tmp: only `serve` and `worker` create
    it, so importing the code must not write samples there (prometheus_client would fail on
    the missing folder), or `tasklane beat` and `tasklane status --worker` could not start in
    the image.
    """
    env = image_environment(dockerfile.final, tmp_path, unpacked_wheel)
    metrics_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    [program] = exec_form(dockerfile.final.last("ENTRYPOINT"))
    [entry_points] = unpacked_wheel.glob("*.dist-info/entry_points.txt")
    scripts = parse_entry_points(entry_points.read_text(encoding="utf-8"))["console_scripts"]
    module, function = scripts[program].split(":")
    workdir = tmp_path / "app"
    workdir.mkdir()
    script = (
        "import contextlib, importlib, io, json, pkgutil, sys\n"
        "import app\n"
        "for info in pkgutil.walk_packages(app.__path__, 'app.'):\n"
        "    importlib.import_module(info.name)\n"
        f"main = getattr(importlib.import_module({module!r}), {function!r})\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit as exited:\n"
        "        code = exited.code\n"
        "files = {n: m.__file__ for n, m in sys.modules.items() if n.split('.')[0] == 'app'}\n"
        "print(json.dumps({'files': files, 'help': out.getvalue(), 'code': code}))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    wheel_modules = {
        ".".join(path.relative_to(unpacked_wheel).with_suffix("").parts).removesuffix(".__init__")
        for path in (unpacked_wheel / "app").rglob("*.py")
    }
    assert set(report["files"]) == wheel_modules
    assert all(Path(file).is_relative_to(unpacked_wheel) for file in report["files"].values())
    assert report["code"] == 0
    assert "serve" in report["help"]
    assert not metrics_dir.exists()


@pytest.mark.integration
def test_image_default_command_serves_health_with_json_logs(
    unpacked_wheel: Path, dockerfile: Dockerfile, tmp_path: Path
) -> None:
    """Starts uvicorn: the wheel's `tasklane` with the image's CMD (bound to loopback here),
    ENV and a fresh /tmp. The launch command must create the metrics folder itself."""
    env = image_environment(dockerfile.final, tmp_path, unpacked_wheel)
    metrics_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    command = exec_form(dockerfile.final.last("CMD"))
    port = free_port()
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    workdir = tmp_path / "app"
    workdir.mkdir()
    log_path = tmp_path / "serve.log"
    # What the console script pip writes into /opt/venv/bin/tasklane does.
    launcher = "import sys; from app.cli import main; sys.exit(main())"

    with (
        log_path.open("wb") as log,
        running(
            [sys.executable, "-c", launcher, *command], cwd=workdir, env=env, output=log
        ) as process,
    ):
        status = wait_for_status(f"http://127.0.0.1:{port}/healthz", timeout=30, process=process)
        time.sleep(0.2)  # the access log line is written after the response

    output = log_path.read_text(errors="replace")
    assert status == 200, output
    assert metrics_dir.is_dir(), output
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any("GET /healthz" in record.get("message", "") for record in records), output
