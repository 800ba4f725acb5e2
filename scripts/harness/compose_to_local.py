"""compose-to-local: compose.yaml's services run as local processes, as chart-to-local runs
the chart's containers (there is no container engine on these machines).

The file is read the way Compose reads it: YAML (merge keys and anchors included), then
variable interpolation of every value (`$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
`${VAR:?error}`, `${VAR?error}`, `${VAR:+other}`, `$$`) from the environment the caller passes
(the .env a user would write), then the services of the active profiles: those without
`profiles`, plus those listing an active one.

A service's process is its `entrypoint` + `command`, each falling back to the image's own
(ENTRYPOINT and CMD of the Dockerfile's final stage for the tasklane image; redis' images
have no entrypoint that changes the command), with the image's ENV under the service's
`environment`. What is rewritten, and nothing else (the same rules as chart-to-local):
- the host name of another service (`redis:6379`, or `redis` after `//` or `@`) -> 127.0.0.1
  and the local port of the process behind it;
- a port the service publishes or exposes, as a whole argument, an environment value, or
  `127.0.0.1:PORT` / `localhost:PORT` inside one -> a free local port;
- tmpfs and volume mount paths -> fresh folders;
- the image's executables -> this machine's (chart_to_local.IMAGE_COMMANDS).
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scripts.harness.chart_to_local import (
    IMAGE_COMMANDS,
    ChartToLocalError,
    LocalContainer,
    image_env,
    rewrite_mounts,
)
from scripts.harness.dockerfile import DOCKERFILE, exec_form, parse_dockerfile
from scripts.harness.processes import REPO_ROOT, free_port

COMPOSE_FILE = REPO_ROOT / "compose.yaml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
#: The repository of the image compose builds from this repository's Dockerfile.
APP_IMAGE = "tasklane"
#: Executables of the images beyond the chart's: the api healthcheck runs the image's Python.
COMPOSE_COMMANDS = {**IMAGE_COMMANDS, "python": sys.executable}

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})"
)


class ComposeError(ChartToLocalError):
    """compose.yaml asks for something Compose would refuse or the image does not have."""


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation of one string (unset and empty differ for `-`/`?`)."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["bare"] or match["name"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        missing = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-"):
            return interpolate(arg, env) if missing else str(value)
        if op in (":?", "?"):
            if missing:
                raise ComposeError(f"required variable {name} is missing a value: {arg}")
            return str(value)
        if op in (":+", "+"):
            return "" if missing else interpolate(arg, env)
        return value or ""

    return _VARIABLE.sub(replace, value)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def load(env: Mapping[str, str], path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The Compose model after YAML merge keys and interpolation."""
    model = yaml.safe_load(path.read_text(encoding="utf-8"))
    return _interpolate_tree(model, env)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def active_services(model: Mapping[str, Any], profiles: Iterable[str] = ()) -> dict[str, Any]:
    """The services `docker compose [--profile P ...] up` starts."""
    active = set(profiles)
    return {
        name: service
        for name, service in model["services"].items()
        if not service.get("profiles") or active & set(service["profiles"])
    }


def is_app_image(service: Mapping[str, Any]) -> bool:
    return str(service.get("image", "")).split(":", 1)[0].rsplit("/", 1)[-1] == APP_IMAGE


def _words(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else [str(word) for word in value]


def container_ports(service: Mapping[str, Any]) -> list[int]:
    """Container ports the service publishes (`ports`, short syntax) or exposes."""
    ports: list[int] = []
    for entry in service.get("ports", []):
        container = str(entry).rsplit(":", 1)[-1].split("/", 1)[0]
        ports.append(int(container))
    ports += [int(str(entry).split("/", 1)[0]) for entry in service.get("expose", [])]
    return ports


@dataclass
class ComposeProject:
    """The active services of one `docker compose up`, resolved for this machine."""

    model: dict[str, Any]
    profiles: tuple[str, ...]
    workdir: Path

    def __post_init__(self) -> None:
        self.services = active_services(self.model, self.profiles)
        #: service name -> {container port -> local port}, filled as services are resolved.
        self.bound: dict[str, dict[int, int]] = {}

    def container(self, name: str) -> LocalContainer:
        """One service as a local process (its ports bound for the services resolved next)."""
        service = self.services[name]
        own_ports = {port: free_port() for port in container_ports(service)}
        self.bound[name] = own_ports
        mounts = self._mounts(name, service)
        app = is_app_image(service)
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        env = {**(image_env() if app else {}), **{k: str(v) for k, v in environment.items()}}
        env = {k: self._rewrite(v, own_ports, mounts) for k, v in env.items()}
        argv = [self._rewrite(word, own_ports, mounts) for word in self._argv(name, service, app)]
        if argv[0] not in COMPOSE_COMMANDS:
            raise ComposeError(f"{name}: the image has no command {argv[0]!r}")
        argv[0] = COMPOSE_COMMANDS[argv[0]]
        healthcheck = service.get("healthcheck", {})
        return LocalContainer(
            workload=name,
            name=name,
            argv=argv,
            env=env,
            declared_env=list(environment),
            ports=own_ports,
            mounts=mounts,
            probes={"healthcheck": healthcheck} if healthcheck else {},
        )

    def healthcheck_argv(self, container: LocalContainer) -> list[str] | None:
        """The service's healthcheck test as a command for this machine."""
        test = container.probes.get("healthcheck", {}).get("test")
        if not test or test == ["NONE"]:
            return None
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        kind, *words = test
        if kind == "CMD-SHELL":
            words = ["sh", "-c", " ".join(words)]
        elif kind != "CMD":
            raise ComposeError(f"{container.name}: healthcheck test {test!r}")
        argv = [self._rewrite(word, container.ports, container.mounts) for word in words]
        if argv[0] not in COMPOSE_COMMANDS:
            raise ComposeError(f"{container.name}: healthcheck needs {argv[0]!r}")
        return [COMPOSE_COMMANDS[argv[0]], *argv[1:]]

    def _argv(self, name: str, service: Mapping[str, Any], app: bool) -> list[str]:
        entrypoint = _words(service.get("entrypoint"))
        command = _words(service.get("command"))
        if app:
            final = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")).final
            if entrypoint is None:
                entrypoint = exec_form(final.last("ENTRYPOINT"))
            if command is None:
                command = exec_form(final.last("CMD"))
        argv = [*(entrypoint or []), *(command or [])]
        if not argv:
            raise ComposeError(f"{name}: no command to run")
        return argv

    def _mounts(self, name: str, service: Mapping[str, Any]) -> dict[str, Path]:
        paths = [str(entry).split(":", 1)[0] for entry in _words_list(service.get("tmpfs"))]
        for volume in service.get("volumes", []):
            source, _, target = str(volume).partition(":")
            if source not in (self.model.get("volumes") or {}):
                raise ComposeError(f"{name}: volume {source!r} is not a named volume")
            paths.append(target.split(":", 1)[0])
        mounts: dict[str, Path] = {}
        for path in paths:
            folder = self.workdir / "volumes" / name / path.strip("/").replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            mounts[path] = folder
        return mounts

    def _rewrite(self, text: str, own_ports: Mapping[int, int], mounts: Mapping[str, Path]) -> str:
        if text.isdigit() and int(text) in own_ports:
            return str(own_ports[int(text)])
        for port, local in own_ports.items():
            text = re.sub(rf"\b(127\.0\.0\.1|localhost):{port}\b", rf"\g<1>:{local}", text)
        for service, ports in self.bound.items():
            host = re.escape(service)
            for port, local in ports.items():
                text = re.sub(rf"(?<![\w.-]){host}:{port}\b", f"127.0.0.1:{local}", text)
            # A bare host name where a URL puts one (after `//` or `user@`), never a scheme.
            text = re.sub(rf"(?<=[/@]){host}(?![\w.:-])", "127.0.0.1", text)
        return rewrite_mounts(text, mounts)


def _words_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
