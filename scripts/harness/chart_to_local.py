"""chart-to-local (DESIGN.md §6): run the chart's rendered containers as local processes.

There is no cluster or container engine here, so the chart is verified by taking each rendered
container's own `command`, `args` and `env` — resolved the way the kubelet resolves them — and
starting them on this machine. What is rewritten, and nothing else:

- in-cluster Service host names (`<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc[.cluster.local]`) →
  127.0.0.1, and each Service port → the local port of the process behind it;
- a container's listening port (its `ports[].containerPort`, wherever it appears in args or
  env) → a free local port, since every pod here shares one network namespace;
- emptyDir mount paths (`/tmp`, `/data`, ...) → fresh folders under the test's tmp_path;
- the image's executables → this machine's: `tasklane`/`celery` from the venv (the image's
  /opt/venv/bin), `redis-server` from Debian's package (the redis image's).

The image's own ENV lines (read from the Dockerfile's final stage; PATH and VIRTUAL_ENV aside,
which only locate its venv) are the base environment of every container running the tasklane
image, as in a container. Environment resolution then follows the kubelet: `envFrom`
(ConfigMaps, Secrets, with prefixes) first, then `env` in order, each `value` expanding
`$(NAME)` of variables defined before it (`$$` escapes); `valueFrom` reads the rendered
ConfigMap/Secret, or fieldRef. `command` and `args` are expanded with the final environment.
A Secret the chart does not render (its hook Job generates it in the cluster) is read from
`live_secrets`, the caller's stand-in for the cluster's Secrets, after the caller ran that Job.
A command the image does not have, a ConfigMap or Secret that exists nowhere, or an environment
variable nobody reads fails the caller.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from scripts.harness.dockerfile import DOCKERFILE, parse_dockerfile, stage_env
from scripts.harness.processes import REPO_ROOT, clean_environment, free_port

Manifest = dict[str, Any]

#: Executables each image provides, mapped to this machine's equivalent.
IMAGE_COMMANDS: dict[str, str] = {
    "tasklane": str(Path(sys.executable).with_name("tasklane")),
    "celery": str(Path(sys.executable).with_name("celery")),
    "redis-server": shutil.which("redis-server") or "/usr/bin/redis-server",
    "redis-cli": shutil.which("redis-cli") or "/usr/bin/redis-cli",
    "sh": "/bin/sh",
}

#: Image ENV that only locates the image's venv; this machine's venv is used instead.
_MACHINE_SPECIFIC = ("PATH", "VIRTUAL_ENV")
#: The tasklane image's repository (values.yaml image.repository).
APP_IMAGE = "tasklane"

_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


class ChartToLocalError(AssertionError):
    """The rendered chart asks for something the image or the app does not have."""


def tools_bin() -> Path:
    """The folder scripts/install-tools fills with helm and kubectl (installing if needed)."""
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "install-tools")],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "tl",
    namespace: str = "default",
    api_versions: Iterable[str] = (),
    workdir: Path,
) -> list[Manifest]:
    """`helm template` of charts/tasklane with `values` (a values file in workdir)."""
    values_file = workdir / "values.yaml"
    values_file.write_text(yaml.safe_dump(dict(values or {})))
    argv = [
        str(tools_bin() / "helm"),
        "template",
        release,
        str(REPO_ROOT / "charts" / "tasklane"),
        "--namespace",
        namespace,
        "--values",
        str(values_file),
    ]
    for version in api_versions:
        argv += ["--api-versions", version]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if out.returncode != 0:
        raise ChartToLocalError(f"helm template failed: {out.stderr}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def image_env() -> dict[str, str]:
    """The environment the tasklane image's ENV lines give every process in it."""
    env = stage_env(parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")).final)
    return {k: v for k, v in env.items() if k not in _MACHINE_SPECIFIC}


def find(objects: Iterable[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        obj
        for obj in objects
        if obj.get("kind") == kind and (name is None or obj["metadata"]["name"] == name)
    ]


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: unknown references stay as written, `$$` is `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


def rewrite_mounts(text: str, mounts: Mapping[str, Path]) -> str:
    """Container paths under a mount (`/tmp/x`) -> the same path under its local folder.

    One pass, longest mount first: a local folder (itself under /tmp) is never rewritten again.
    """
    if not mounts:
        return text
    paths = "|".join(re.escape(mount) for mount in sorted(mounts, key=len, reverse=True))
    return re.sub(rf"(?<![\w.])({paths})(?=/|$)", lambda m: str(mounts[m[1]]), text)


def settings_env_names() -> set[str]:
    """Every environment variable app/config.py reads (to catch a variable nobody reads)."""
    names: set[str] = set()
    for field_name, info in Settings.model_fields.items():
        names.add(f"TASKLANE_{field_name.upper()}")
        alias = info.validation_alias
        for choice in getattr(alias, "choices", ()):
            if isinstance(choice, str):
                names.add(choice.upper())
    return names


def referenced_names(text: str) -> set[str]:
    return {m.group(1) for m in _REFERENCE.finditer(text) if m.group(1)}


@dataclass
class LocalContainer:
    """One rendered container, resolved for this machine."""

    workload: str
    name: str
    argv: list[str]
    env: dict[str, str]
    #: env names the manifest sets (before rewriting), to check each one is read by someone.
    declared_env: list[str]
    #: containerPort -> local port it listens on here.
    ports: dict[int, int]
    #: emptyDir mount path -> local folder.
    mounts: dict[str, Path]
    probes: dict[str, Any] = field(default_factory=dict)

    def spawn(self, log_path: Path, base_env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """Start it in its own session (so the whole process tree can be stopped)."""
        with log_path.open("ab") as output:
            return subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env={**base_env, **self.env},
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


class Cluster:
    """The rendered objects plus the rewriting rules for one local 'cluster'."""

    def __init__(
        self,
        objects: list[Manifest],
        *,
        namespace: str,
        workdir: Path,
        live_secrets: Callable[[str], Mapping[str, str] | None] | None = None,
    ) -> None:
        self.objects = objects
        self.namespace = namespace
        self.workdir = workdir
        #: Secrets that exist in the 'cluster' without being rendered (name -> decoded data,
        #: None when absent): what the chart's secrets hook Job created.
        self.live_secrets = live_secrets
        #: Service name -> {service port -> local port}; filled by bind_service().
        self.services: dict[str, dict[int, int]] = {}

    # -- services ------------------------------------------------------------------------------

    def bind_service(self, service: str, local_ports: Mapping[int, int]) -> None:
        """Route `service`'s ports (Service port → local port of the process behind it)."""
        if not find(self.objects, "Service", service):
            raise ChartToLocalError(f"the chart renders no Service {service!r}")
        self.services[service] = dict(local_ports)

    def service_ports(self, service: str) -> dict[int, int]:
        """Service port -> targetPort number (resolving named targetPorts via the pod's
        container ports is left to the caller: the chart's names map to one number each)."""
        (svc,) = find(self.objects, "Service", service)
        return {port["port"]: port.get("targetPort", port["port"]) for port in svc["spec"]["ports"]}

    def rewrite(self, text: str, own_ports: Mapping[int, int], mounts: Mapping[str, Path]) -> str:
        ns = re.escape(self.namespace)
        for service, ports in self.services.items():
            host = re.escape(service) + rf"(?:\.{ns}(?:\.svc(?:\.cluster\.local)?)?)?"
            for port, local in ports.items():
                text = re.sub(rf"\b{host}:{port}\b", f"127.0.0.1:{local}", text)
            text = re.sub(rf"(?<![\w.-]){host}(?![\w.-])", "127.0.0.1", text)
        return rewrite_mounts(text, mounts)

    # -- containers ----------------------------------------------------------------------------

    def container(self, workload_kind: str, workload: str, name: str) -> LocalContainer:
        (obj,) = find(self.objects, workload_kind, workload)
        pod = obj["spec"]["template"]
        (spec,) = [c for c in pod["spec"]["containers"] if c["name"] == name]
        mounts = self._mounts(pod["spec"], spec, workload)
        own_ports = {p["containerPort"]: free_port() for p in spec.get("ports", [])}
        env, declared = self._environment(spec, pod)
        env = {
            k: self._rewrite_ports(self.rewrite(v, own_ports, mounts), own_ports)
            for k, v in env.items()
        }
        raw = [*spec.get("command", []), *spec.get("args", [])]
        if not raw:
            raise ChartToLocalError(f"{workload}/{name}: no command: the image default is untested")
        argv = [
            self._rewrite_ports(self.rewrite(expand(part, env), own_ports, mounts), own_ports)
            for part in raw
        ]
        if argv[0] not in IMAGE_COMMANDS:
            raise ChartToLocalError(f"{workload}/{name}: the image has no command {argv[0]!r}")
        argv[0] = IMAGE_COMMANDS[argv[0]]
        probes = {
            kind: spec[kind]
            for kind in ("startupProbe", "livenessProbe", "readinessProbe")
            if kind in spec
        }
        return LocalContainer(workload, name, argv, env, declared, own_ports, mounts, probes)

    def probe_argv(self, container: LocalContainer, kind: str) -> list[str] | None:
        """An exec probe's command for this machine (None for an HTTP/TCP probe)."""
        probe = container.probes.get(kind, {})
        command = probe.get("exec", {}).get("command")
        if not command:
            return None
        argv = [
            self.rewrite(expand(p, container.env), container.ports, container.mounts)
            for p in command
        ]
        if argv[0] not in IMAGE_COMMANDS:
            raise ChartToLocalError(f"{kind} of {container.name}: no command {argv[0]!r}")
        return [IMAGE_COMMANDS[argv[0]], *argv[1:]]

    def _rewrite_ports(self, text: str, own_ports: Mapping[int, int]) -> str:
        # A bare listening port ("--port 8000", "9464") becomes the local one.
        if text.isdigit() and int(text) in own_ports:
            return str(own_ports[int(text)])
        return text

    def _mounts(self, pod_spec: Manifest, spec: Manifest, workload: str) -> dict[str, Path]:
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        claims = {
            t["metadata"]["name"]
            for obj in find(self.objects, "StatefulSet", workload)
            for t in obj["spec"].get("volumeClaimTemplates", [])
        }
        mounts: dict[str, Path] = {}
        for mount in spec.get("volumeMounts", []):
            volume = volumes.get(mount["name"])
            if volume is None and mount["name"] not in claims:
                raise ChartToLocalError(f"{workload}: mount of undeclared volume {mount['name']}")
            if volume is not None and "emptyDir" not in volume and mount["name"] not in claims:
                raise ChartToLocalError(f"{workload}: volume {mount['name']} is not an emptyDir")
            folder = self.workdir / "volumes" / workload / mount["name"]
            folder.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = folder
        return mounts

    def _environment(self, spec: Manifest, pod: Manifest) -> tuple[dict[str, str], list[str]]:
        repository = spec["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1]
        env: dict[str, str] = image_env() if repository == APP_IMAGE else {}
        declared: list[str] = []
        for source in spec.get("envFrom", []):
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self._config_map(source["configMapRef"]["name"])
            elif "secretRef" in source:
                data = self._secret(source["secretRef"]["name"])
            else:
                raise ChartToLocalError(f"unsupported envFrom {source}")
            for key, value in data.items():
                env[prefix + key] = value
                declared.append(prefix + key)
        for item in spec.get("env", []):
            name = item["name"]
            declared.append(name)
            if "value" in item:
                env[name] = expand(str(item["value"]), env)
            elif "valueFrom" in item:
                env[name] = self._value_from(item["valueFrom"], pod)
            else:
                env[name] = ""
        return env, declared

    def _value_from(self, source: Manifest, pod: Manifest) -> str:
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return self._config_map(ref["name"])[ref["key"]]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = self._secret(ref["name"])
            if ref["key"] not in data:
                raise ChartToLocalError(f"Secret {ref['name']} has no key {ref['key']}")
            return data[ref["key"]]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            fields = {
                "metadata.namespace": self.namespace,
                "metadata.name": "local-pod",
                "status.podIP": "127.0.0.1",
                "spec.nodeName": "local-node",
            }
            if path not in fields:
                raise ChartToLocalError(f"unsupported fieldRef {path}")
            return fields[path]
        raise ChartToLocalError(f"unsupported valueFrom {source}")

    def _config_map(self, name: str) -> dict[str, str]:
        found = find(self.objects, "ConfigMap", name)
        if not found:
            raise ChartToLocalError(f"the chart renders no ConfigMap {name!r}")
        return {k: str(v) for k, v in (found[0].get("data") or {}).items()}

    def _secret(self, name: str) -> dict[str, str]:
        found = find(self.objects, "Secret", name)
        if not found:
            live = self.live_secrets(name) if self.live_secrets is not None else None
            if live is None:
                raise ChartToLocalError(
                    f"the chart renders no Secret {name!r} and none exists in the cluster"
                )
            return dict(live)
        secret = found[0]
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        data.update({k: str(v) for k, v in (secret.get("stringData") or {}).items()})
        return data


# -- running them: the started processes, and what a test asks of them over HTTP ---------------

#: Statuses a record ends in.
FINAL = {"SUCCESS", "FAILURE", "CANCELLED"}


class LocalPods:
    """Started containers; stops every process group at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[tuple[LocalContainer, subprocess.Popen[bytes]]] = []

    def start(self, container: LocalContainer) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"{container.workload}-{container.name}.log"
        process = container.spawn(log, clean_environment())
        self.processes.append((container, process))
        return process

    def log(self, container: LocalContainer) -> str:
        return (self.tmp_path / f"{container.workload}-{container.name}.log").read_text(
            errors="replace"
        )

    def process_of(self, container: LocalContainer) -> subprocess.Popen[bytes]:
        (process,) = [p for c, p in self.processes if c is container]
        return process

    def probe_until_passes(
        self, container: LocalContainer, argv: list[str], within: float = 30
    ) -> None:
        """Run an exec probe (a kubelet exec probe, a Compose healthcheck) in the container's
        environment until it exits 0; fail when the container's process exits first or
        `within` seconds pass."""
        deadline = time.monotonic() + within
        while True:
            probe = subprocess.run(
                argv,
                env={**clean_environment(), **container.env},
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if probe.returncode == 0:
                return
            assert self.process_of(container).poll() is None, self.log(container)
            assert time.monotonic() < deadline, (probe.stdout, probe.stderr, self.log(container))
            time.sleep(0.5)

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)


def wait_http(url: str, path: str, within: float = 30) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        try:
            response = httpx.get(url + path, timeout=5)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url}{path} never answered 200"
        time.sleep(0.2)


def submit_and_wait(
    url: str, headers: dict[str, str], name: str, args: list[Any], within: float = 60
) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/api/tasks", json={"name": name, "args": args}, headers=headers, timeout=10
    )
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    deadline = time.monotonic() + within
    while True:
        status_url = f"{url}/api/tasks/{task_id}/status"
        record = httpx.get(status_url, headers=headers, timeout=10).json()
        if record["status"] in FINAL:
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.2)


def finished_on(worker: LocalContainer) -> dict[tuple[str, str, str], float]:
    """tasklane_tasks_finished_total by (task, executor, status), from the worker process's own
    metrics endpoint (its rendered container port, rewritten): what that process ran."""
    (metrics_port,) = worker.ports.values()
    metrics = wait_http(f"http://127.0.0.1:{metrics_port}", "/metrics").text
    return {
        (sample.labels["task"], sample.labels["executor"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "tasklane_tasks_finished_total"
    }
