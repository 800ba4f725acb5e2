"""A local stand-in for the Kubernetes API server: no cluster exists on these machines.

FakeKubeApi serves, over real HTTP on 127.0.0.1 (stdlib http.server, one thread per
connection), exactly the paths tasklane's code uses, with the API server's wire behaviour:

  GET   /apis/apps/v1/namespaces/{ns}/deployments[?fieldSelector=metadata.name=N][&watch=true]
                                                  [?labelSelector=k=v,k2=v2] (equality terms)
  GET   /apis/apps/v1/namespaces/{ns}/deployments/{name}            PATCH (merge patch)
  GET   /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale      PATCH (merge patch)
  GET   /apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects[...]    list and watch
  GET   /apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects/{name} PATCH (merge patch)
  GET   /api/v1/namespaces/{ns}/secrets[/{name}]   POST (create: 201, or 409 AlreadyExists)
                                                    PATCH (merge patch; a stale
                                                    metadata.resourceVersion answers 409)

State is in memory with one resourceVersion counter; every change is kept in a history, so a
watch started from a resourceVersion replays what came after it, and a watch from a version
older than `compact()` gets the 410 Gone ERROR event. Watch responses are chunked
newline-delimited JSON events, as the API server sends them; `drop_watches()` cuts every open
stream mid-flight (no chunked terminator), `end_watches()` ends them cleanly. `fail()` makes
matching requests answer 403/404/500 with the API's Status body, or hang up (HANG_UP); without
`keda_installed` the keda.sh paths answer 404, like a cluster without the CRD.

    with FakeKubeApi() as api:
        api.add_deployment("tasklane-worker", replicas=2)
        configuration = api.configuration()          # kubernetes.client.Configuration
        kubeconfig = api.write_kubeconfig(tmp_path)  # for `tasklane scale --kubeconfig`
"""

from __future__ import annotations

import base64
import copy
import json
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

#: fail(HANG_UP): close the connection without an answer (a reset, a dying load balancer).
HANG_UP = 0
DEPLOYMENTS = "deployments"
SCALED_OBJECTS = "scaledobjects"
SECRETS = "secrets"
_PATH = re.compile(
    r"^/(?:apis/(?P<group>apps/v1|keda\.sh/v1alpha1)|api/v1)/namespaces/(?P<ns>[^/]+)/"
    r"(?P<plural>deployments|scaledobjects|secrets)(?:/(?P<name>[^/]+)(?P<scale>/scale)?)?$"
)
_LIST_KINDS = {
    DEPLOYMENTS: "DeploymentList",
    SCALED_OBJECTS: "ScaledObjectList",
    SECRETS: "SecretList",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (null removes a key); strategic merge of plain maps is the
    same for the fields tasklane patches."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class Fault:
    status: int
    method: str | None
    path: str
    watch: bool | None
    times: int | None
    message: str


@dataclass
class _Stream:
    handler: BaseHTTPRequestHandler
    closed: threading.Event = field(default_factory=threading.Event)
    drop: bool = False


class FakeKubeApi:
    """In-memory Kubernetes API for tests (see the module docstring)."""

    def __init__(
        self, *, keda_installed: bool = True, auto_status: bool = True, port: int = 0
    ) -> None:
        self.keda_installed = keda_installed
        #: Deployment status follows spec at once, like a fast controller.
        self.auto_status = auto_status
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.version = 100
        self.compacted = 0
        self.faults: list[Fault] = []
        #: (method, path, query) of every request, in order.
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.changed = threading.Condition()
        self.streams: list[_Stream] = []
        api = self

        class Handler(_Handler):
            fake = api

        # port: reuse a stopped server's port, so clients configured for it reconnect.
        self.server = _QuietServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: new connections are refused, open streams cut."""
        self.drop_watches()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def configuration(self) -> Any:
        from kubernetes.client import Configuration

        configuration = Configuration(host=self.url)
        configuration.retries = 0
        return configuration

    def write_kubeconfig(self, folder: Path, namespace: str = "default") -> Path:
        """A kubeconfig whose current context points at this server (JSON is valid YAML)."""
        path = folder / "kubeconfig"
        path.write_text(kubeconfig(self.url, namespace))
        return path

    # -- state -----------------------------------------------------------------------------------

    def add_deployment(
        self,
        name: str,
        *,
        replicas: int = 1,
        namespace: str = "default",
        ready: int | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        obj = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": []}},
            },
            "status": {"replicas": replicas, "readyReplicas": replicas if ready is None else ready},
        }
        if labels:
            obj["metadata"]["labels"] = labels
        if annotations:
            obj["metadata"]["annotations"] = annotations
        return self.put(DEPLOYMENTS, obj, "ADDED")

    def add_scaled_object(
        self,
        name: str,
        *,
        target: str | None = None,
        min_replicas: int | None = 0,
        max_replicas: int | None = 10,
        annotations: dict[str, str] | None = None,
        namespace: str = "default",
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {"scaleTargetRef": {"name": target or name}}
        if min_replicas is not None:
            spec["minReplicaCount"] = min_replicas
        if max_replicas is not None:
            spec["maxReplicaCount"] = max_replicas
        obj = {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
            "spec": spec,
        }
        return self.put(SCALED_OBJECTS, obj, "ADDED")

    def add_secret(
        self,
        name: str,
        data: dict[str, str],
        *,
        namespace: str = "default",
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A Secret holding `data` (plain text here, base64 on the wire as the API keeps it)."""
        obj = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
            "type": "Opaque",
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
        }
        return self.put(SECRETS, obj, "ADDED")

    def secret_data(self, name: str, namespace: str = "default") -> dict[str, str] | None:
        """A Secret's data decoded to plain text (None: no such Secret)."""
        obj = self.get(SECRETS, name, namespace)
        if obj is None:
            return None
        return {key: base64.b64decode(v).decode() for key, v in (obj.get("data") or {}).items()}

    def get(self, plural: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        with self.changed:
            obj = self.objects.get((plural, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def patch(
        self, plural: str, name: str, patch: dict[str, Any], namespace: str = "default"
    ) -> dict[str, Any]:
        """Change an object as a client's merge patch would (kubectl scale, kubectl annotate)."""
        with self.changed:
            current = self.objects[(plural, namespace, name)]
            updated = merge_patch(current, patch)
            if plural == DEPLOYMENTS and self.auto_status:
                replicas = updated["spec"].get("replicas", 1)
                updated["status"] = {"replicas": replicas, "readyReplicas": replicas}
            return self.put(plural, updated, "MODIFIED")

    def scale(self, name: str, replicas: int, namespace: str = "default") -> dict[str, Any]:
        """What `kubectl scale deployment/<name> --replicas=N` does."""
        return self.patch(DEPLOYMENTS, name, {"spec": {"replicas": replicas}}, namespace)

    def delete(self, plural: str, name: str, namespace: str = "default") -> None:
        with self.changed:
            obj = self.objects.pop((plural, namespace, name))
            self.version += 1
            obj = merge_patch(obj, {"metadata": {"resourceVersion": str(self.version)}})
            self.history.append((self.version, plural, "DELETED", obj))
            self.changed.notify_all()

    def put(self, plural: str, obj: dict[str, Any], event: str) -> dict[str, Any]:
        with self.changed:
            self.version += 1
            obj = merge_patch(obj, {"metadata": {"resourceVersion": str(self.version)}})
            meta = obj["metadata"]
            self.objects[(plural, meta["namespace"], meta["name"])] = obj
            self.history.append((self.version, plural, event, copy.deepcopy(obj)))
            self.changed.notify_all()
            return copy.deepcopy(obj)

    def compact(self) -> None:
        """Forget history: a watch from any resourceVersion seen so far gets 410 Gone (a new
        list returns a newer one, which watches fine)."""
        with self.changed:
            self.compacted = self.version
            self.version += 1
            self.history.clear()

    # -- faults ----------------------------------------------------------------------------------

    def fail(
        self,
        status: int,
        *,
        path: str = "",
        method: str | None = None,
        watch: bool | None = None,
        times: int | None = None,
        message: str | None = None,
    ) -> Fault:
        """Answer `status` (or HANG_UP) to requests whose path contains `path` (and method /
        watch match), `times` times (None: until clear_faults)."""
        fault = Fault(
            status, method, path, watch, times, message or f"injected failure {status} on {path}"
        )
        with self.changed:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.changed:
            self.faults.clear()

    def drop_watches(self) -> None:
        """Cut every open watch stream without the chunked terminator (a broken connection)."""
        self._close_streams(drop=True)

    def end_watches(self) -> None:
        """End every open watch stream cleanly (as the server's timeoutSeconds does)."""
        self._close_streams(drop=False)

    def _close_streams(self, *, drop: bool) -> None:
        with self.changed:
            streams, self.streams = self.streams, []
            for stream in streams:
                stream.drop = drop
                stream.closed.set()
            self.changed.notify_all()

    def open_watches(self, plural: str | None = None) -> int:
        """How many watch streams are open now (of `plural`, or of any kind)."""
        with self.changed:
            return sum(
                1
                for stream in self.streams
                if plural is None or getattr(stream.handler, "plural", None) == plural
            )

    def wait_for_watches(self, count: int, plural: str | None = None, within: float = 5) -> None:
        deadline = time.monotonic() + within
        while self.open_watches(plural) < count:
            assert time.monotonic() < deadline, f"{count} watch stream(s) not opened in time"
            time.sleep(0.01)

    def _fault_for(self, method: str, path: str, watching: bool) -> Fault | None:
        with self.changed:
            for fault in self.faults:
                if fault.path not in path:
                    continue
                if fault.method is not None and fault.method != method:
                    continue
                if fault.watch is not None and fault.watch != watching:
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                return fault
        return None


def kubeconfig(server: str, namespace: str = "default") -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": server}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
    )


def status_body(code: int, message: str) -> dict[str, Any]:
    reasons = {
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        409: "Conflict",
        410: "Expired",
        500: "InternalError",
    }
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reasons.get(code, "Unknown"),
        "code": code,
    }


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (a watcher stopping) is routine here; anything else is a bug
        # in this stand-in and keeps its traceback.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKubeApi
    protocol_version = "HTTP/1.1"
    plural: str | None = None

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    # -- plumbing --------------------------------------------------------------------------------

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._reply(code, status_body(code, message))

    def _route(self, method: str) -> tuple[re.Match[str], dict[str, str]] | None:
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self.fake.requests.append((method, url.path, query))
        match = _PATH.match(url.path)
        watching = query.get("watch") in ("true", "1")
        fault = self.fake._fault_for(method, url.path, watching)
        if fault is not None and fault.status == HANG_UP:
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return None
        if fault is not None:
            self._error(fault.status, fault.message)
            return None
        if match is None:
            self._error(404, f"the server could not find the requested resource ({url.path})")
            return None
        if match["plural"] == SCALED_OBJECTS and not self.fake.keda_installed:
            self._error(404, "the server could not find the requested resource")
            return None
        return match, query

    # -- verbs -----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        routed = self._route("GET")
        if routed is None:
            return
        match, query = routed
        plural, ns, name = match["plural"], match["ns"], match["name"]
        if name is None:
            if query.get("watch") in ("true", "1"):
                self._watch(plural, ns, query)
            else:
                self._list(plural, ns, query)
            return
        obj = self.fake.get(plural, name, ns)
        if obj is None:
            self._error(404, f'{plural} "{name}" not found')
        elif match["scale"]:
            self._reply(200, _scale_of(obj))
        else:
            self._reply(200, obj)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        routed = self._route("POST")
        if routed is None:
            return
        match, _ = routed
        plural, ns = match["plural"], match["ns"]
        if match["name"] is not None:
            self._error(405, "the server does not allow this method on the requested resource")
            return
        obj = json.loads(raw or b"{}")
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = ns
        with self.fake.changed:
            if self.fake.get(plural, meta.get("name", ""), ns) is not None:
                self._error(409, f'{plural} "{meta.get("name")}" already exists')
                return
            created = self.fake.put(plural, obj, "ADDED")
        self._reply(201, created)

    def do_PATCH(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        routed = self._route("PATCH")
        if routed is None:
            return
        match, _ = routed
        plural, ns, name = match["plural"], match["ns"], match["name"]
        current = self.fake.get(plural, name, ns) if name is not None else None
        if current is None:
            self._error(404, f'{plural} "{name}" not found')
            return
        patch = json.loads(raw or b"{}")
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected is not None and expected != current["metadata"]["resourceVersion"]:
            self._error(
                409,
                f'Operation cannot be fulfilled on {plural} "{name}": the object '
                "has been modified; please apply your changes to the latest version",
            )
            return
        if match["scale"]:
            replicas = (patch.get("spec") or {}).get("replicas")
            updated = self.fake.patch(plural, name, {"spec": {"replicas": replicas}}, ns)
            self._reply(200, _scale_of(updated))
        else:
            self._reply(200, self.fake.patch(plural, name, patch, ns))

    # -- list and watch --------------------------------------------------------------------------

    def _selected(self, query: dict[str, str]) -> str | None:
        selector = query.get("fieldSelector") or ""
        return selector.removeprefix("metadata.name=") if selector else None

    @staticmethod
    def _labels(query: dict[str, str]) -> dict[str, str]:
        """The labelSelector's terms; equality terms only ("k=v,k2=v2"): what tasklane sends."""
        return dict(
            term.split("=", 1) for term in (query.get("labelSelector") or "").split(",") if term
        )

    def _list(self, plural: str, ns: str, query: dict[str, str]) -> None:
        wanted = self._selected(query)
        labels = self._labels(query)
        with self.fake.changed:
            items = [
                copy.deepcopy(obj)
                for (kind, namespace, name), obj in sorted(self.fake.objects.items())
                if kind == plural
                and namespace == ns
                and wanted in (None, name)
                and labels.items() <= (obj["metadata"].get("labels") or {}).items()
            ]
            version = str(self.fake.version)
        kind = _LIST_KINDS[plural]
        self._reply(200, {"kind": kind, "metadata": {"resourceVersion": version}, "items": items})

    def _watch(self, plural: str, ns: str, query: dict[str, str]) -> None:
        self.plural = plural
        wanted = self._selected(query)
        timeout = float(query.get("timeoutSeconds") or 1800)
        since = query.get("resourceVersion") or ""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        stream = _Stream(self)

        labels = self._labels(query)

        def matches(kind: str, obj: dict[str, Any]) -> bool:
            meta = obj["metadata"]
            return (
                kind == plural
                and meta["namespace"] == ns
                and wanted in (None, meta["name"])
                and labels.items() <= (meta.get("labels") or {}).items()
            )

        with self.fake.changed:
            self.fake.streams.append(stream)
            if since in ("", "0"):
                cursor = self.fake.version
                pending = [
                    {"type": "ADDED", "object": copy.deepcopy(obj)}
                    for (kind, _, _), obj in sorted(self.fake.objects.items())
                    if matches(kind, obj)
                ]
            elif int(since) <= self.fake.compacted:
                gone = status_body(410, "too old resource version")
                pending = [{"type": "ERROR", "object": gone}]
                cursor = -1
            else:
                cursor, pending = int(since), []
        deadline = time.monotonic() + timeout
        try:
            while True:
                for event in pending:
                    self._chunk(json.dumps(event).encode() + b"\n")
                if cursor < 0:
                    break
                with self.fake.changed:
                    pending = []
                    while not pending:
                        if stream.closed.is_set() or time.monotonic() >= deadline:
                            break
                        for version, kind, event_type, obj in self.fake.history:
                            if version > cursor and matches(kind, obj):
                                pending.append({"type": event_type, "object": copy.deepcopy(obj)})
                        cursor = max([cursor, *(v for v, *_ in self.fake.history)])
                        if not pending:
                            self.fake.changed.wait(min(0.2, max(deadline - time.monotonic(), 0)))
                if not pending:
                    break
            if stream.drop:
                # A broken connection: no terminating chunk, the socket just goes away.
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self._chunk(b"")
        except OSError:
            self.close_connection = True
        finally:
            with self.fake.changed:
                if stream in self.fake.streams:
                    self.fake.streams.remove(stream)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _scale_of(deployment: dict[str, Any]) -> dict[str, Any]:
    meta = deployment["metadata"]
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "resourceVersion": meta["resourceVersion"],
        },
        "spec": {"replicas": deployment["spec"].get("replicas", 1)},
        "status": {"replicas": deployment.get("status", {}).get("replicas", 0)},
    }


class BlackHole:
    """A TCP port that accepts connections and never answers (a black-holed API server)."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.socket.close()
