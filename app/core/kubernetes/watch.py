"""KubeWatcher: follows the worker Deployments and their ScaledObjects from two daemon threads.

Each thread runs the informer loop client-go uses: list, then watch from the list's
resourceVersion; a stream the server ends resumes from the last resourceVersion seen, a 410 Gone
or a broken stream lists again. The Deployments are the release's worker pools, selected by the
chart's labels (TASKLANE_WORKER_SELECTOR, labelSelector), or one Deployment by name
(TASKLANE_WORKER_DEPLOYMENT, fieldSelector: k8s/ users and releases of older charts); the
namespace's ScaledObjects are all followed (a namespace holds few) and each Deployment is paired
with the one targeting it, preferring TASKLANE_SCALED_OBJECT's name (by selector: the
Deployment's own), so a ScaledObject named otherwise is still found. The answer is one
immutable KubeView that `view` returns without locking, so the WorkerMonitor reads it on the
request path with no I/O.

Failures never reach routing: a list that fails (RBAC 403, API server unreachable, 5xx) marks
that object unknown, so routing falls back to heartbeats and TASKLANE_SCALE_FROM_ZERO; it is
logged once per kind of failure (changes.py) and retried with capped, jittered exponential
backoff. A 404 on the ScaledObject list means KEDA's CRD is not served: normal, re-checked every
`keda_recheck` seconds. When lists work but watches keep failing (RBAC without "watch", a proxy
cutting streams), the thread polls with lists every `poll_interval` seconds and tries a watch
again now and then.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from app.core.kubernetes.changes import DEPLOYMENT, SCALED_OBJECT, log_change
from app.core.kubernetes.client import UNREACHABLE, describe_failure
from app.core.kubernetes.retry import Backoff, shutdown_stream
from app.core.kubernetes.state import (
    KEDA_GROUP,
    KEDA_PLURAL,
    KEDA_VERSION,
    DeploymentState,
    KubeView,
    ScaledObjectState,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient
    from urllib3 import BaseHTTPResponse

log = logging.getLogger("tasklane.kubernetes")

#: Every way a list or watch can fail that is retried (not a bug).
FAILURES: tuple[type[BaseException], ...] = (ApiException, *UNREACHABLE)
#: Consecutive failed watches (with working lists) before a thread switches to polling.
WATCH_FAILURES_BEFORE_POLLING = 3
#: While polling, a watch is tried again every this many polls.
POLLS_BETWEEN_WATCH_ATTEMPTS = 12


@dataclass(frozen=True, slots=True)
class _Kind:
    """One followed kind: how to list/watch it, and which object of it matters."""

    label: str
    #: What is followed, for log lines: the Deployment's name or selector; for ScaledObjects
    #: the preferred name.
    name: str
    #: Lists (or with watch=True, watches) the namespace's objects of this kind.
    call: Callable[..., Any]
    field_selector: str | None
    label_selector: str | None = None

    @property
    def optional(self) -> bool:
        """May the kind be missing from the cluster (KEDA's CRD)? A 404 is then an answer."""
        return self.label == SCALED_OBJECT


class KubeWatcher:
    """The api's view of the worker Deployments and their ScaledObjects, kept current by watches.

    Give `selector` (a labelSelector: every pool of a release) or `deployment` (one by name).
    """

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        deployment: str | None = None,
        selector: str | None = None,
        scaled_object: str | None = None,
        scale_from_zero_flag: bool = False,
        watch_timeout: int = 290,
        request_timeout: float = 10.0,
        poll_interval: float = 10.0,
        keda_recheck: float = 60.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        from kubernetes.client import AppsV1Api, CustomObjectsApi

        self.api_client = api_client
        self.namespace = namespace
        self.scale_from_zero_flag = scale_from_zero_flag
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout
        self.poll_interval = poll_interval
        self.keda_recheck = keda_recheck
        self.backoff = (backoff_initial, backoff_max)
        if not (selector or deployment):
            raise ValueError("KubeWatcher needs a Deployment name or a label selector")
        deployment = "" if selector else deployment or ""
        scaled_object = "" if selector else scaled_object or deployment
        apps, custom = AppsV1Api(api_client), CustomObjectsApi(api_client)

        def list_scaled_objects(namespace: str, **query: Any) -> Any:
            return custom.list_namespaced_custom_object(
                KEDA_GROUP, KEDA_VERSION, namespace, KEDA_PLURAL, **query
            )

        self.kinds = (
            _Kind(
                DEPLOYMENT,
                selector or deployment,
                apps.list_namespaced_deployment,
                None if selector else f"metadata.name={deployment}",
                selector,
            ),
            _Kind(SCALED_OBJECT, scaled_object, list_scaled_objects, None),
        )
        self._view = KubeView(
            namespace=namespace,
            deployment_name=deployment,
            scaled_object_name=scaled_object,
            selector=selector,
        )
        #: Raw objects of each kind by name, as the last list and the events since left them.
        self._objects: dict[str, dict[str, dict[str, Any]]] = {k.label: {} for k in self.kinds}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._streams: dict[str, BaseHTTPResponse] = {}
        #: View changes so far, for tests and diagnostics.
        self.updates = 0

    @property
    def view(self) -> KubeView:
        return self._view

    def describe(self) -> dict[str, object]:
        return self._view.describe(self.scale_from_zero_flag)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start following (no-op while running); returns at once, the threads do the I/O."""
        if any(thread.is_alive() for thread in self._threads):
            return
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._follow,
                args=(kind, self._stopping),
                name=f"tasklane-kube-{kind.label.lower()}",
                daemon=True,
            )
            for kind in self.kinds
        ]
        for thread in self._threads:
            thread.start()
        log.info(
            "following %s %s (and their ScaledObjects) in namespace %s",
            "the Deployments labelled" if self._view.selector else "Deployment",
            self.kinds[0].name,
            self.namespace,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads: open watch streams are shut down so no read blocks the join."""
        self._stopping.set()
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            shutdown_stream(stream)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))
        self.api_client.close()

    def sync_once(self) -> KubeView:
        """List both kinds once in this thread (`tasklane status`); failures are recorded in the
        view, never raised."""
        for kind in self.kinds:
            try:
                self._list(kind)
            except FAILURES as exc:
                if kind.optional and isinstance(exc, ApiException) and exc.status == 404:
                    self._crd_absent()
                else:
                    self._failed(kind, exc)
        return self._view

    # -- one thread per kind ---------------------------------------------------------------------

    def _follow(self, kind: _Kind, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                self._follow_until_stopped(kind, stopping)
            except Exception:  # a bug must not silently end the following for good
                log.exception("following %s %s crashed; restarting", kind.label, kind.name)
                self._update(kind, **_unknown(kind, "internal error (see the log)"))
                stopping.wait(self.backoff[1])

    def _follow_until_stopped(self, kind: _Kind, stopping: threading.Event) -> None:
        backoff = Backoff(*self.backoff)
        version: str | None = None
        polling, watch_failures, polls, list_failures = False, 0, 0, 0
        while not stopping.is_set():
            try:
                if version is None:
                    version = self._list(kind)
                    backoff.reset()
                    list_failures = 0
            except FAILURES as exc:
                list_failures += 1
                if kind.optional and isinstance(exc, ApiException) and exc.status == 404:
                    self._crd_absent()
                    stopping.wait(self.keda_recheck)
                elif isinstance(exc, ApiException) or list_failures > 1:
                    self._failed(kind, exc)
                    stopping.wait(backoff.next())
                else:
                    # One connection failure (a keep-alive connection closed under us) keeps
                    # the view; a second one in a row means the API server is gone.
                    log.debug("listing %s %s failed once: %s", kind.label, kind.name, exc)
                    stopping.wait(backoff.initial)
                continue
            if polling:
                polls += 1
                stopping.wait(self.poll_interval)
                version = None
                if polls % POLLS_BETWEEN_WATCH_ATTEMPTS == 0:
                    polling, watch_failures = False, 0
                continue
            started = time.monotonic()
            try:
                version, delivered = self._watch(kind, version, stopping)
            except FAILURES as exc:
                if stopping.is_set():
                    return
                watch_failures += 1
                forbidden = isinstance(exc, ApiException) and exc.status in (403, 405)
                if forbidden or watch_failures >= WATCH_FAILURES_BEFORE_POLLING:
                    polling, polls = True, 0
                    log.warning(
                        "cannot watch %s %s (%s); polling it every %.0f s instead",
                        kind.label,
                        kind.name,
                        describe_failure(exc, kind.label + "s", self.namespace),
                        self.poll_interval,
                    )
                else:
                    log.info("watch of %s %s broke (%s); listing again", kind.label, kind.name, exc)
                version = None
                stopping.wait(backoff.next())
                continue
            if delivered or time.monotonic() - started > 1.0:
                watch_failures = 0
            elif not stopping.is_set():
                # A server that ends every watch at once must not make this a busy loop.
                stopping.wait(backoff.next())

    def _list(self, kind: _Kind) -> str:
        """List the kind once and record it; returns the list's resourceVersion."""
        response = kind.call(
            self.namespace,
            field_selector=kind.field_selector,
            label_selector=kind.label_selector,
            _preload_content=False,
            _request_timeout=(self.request_timeout, self.request_timeout),
        )
        try:
            body = json.loads(response.data)
        finally:
            response.release_conn()
        objects = {_name(item): item for item in body.get("items") or ()}
        with self._lock:
            self._objects[kind.label] = objects
        self._publish(kind)
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(
        self, kind: _Kind, version: str, stopping: threading.Event
    ) -> tuple[str | None, bool]:
        """Follow one watch stream; returns (resourceVersion to resume from, None: list again;
        whether any event arrived)."""
        response = kind.call(
            self.namespace,
            field_selector=kind.field_selector,
            label_selector=kind.label_selector,
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=version or None,
            timeout_seconds=self.watch_timeout,
            _preload_content=False,
            # The server ends the stream after watch_timeout; reading longer than that plus a
            # margin means the connection is dead (a black-holed API server).
            _request_timeout=(self.request_timeout, self.watch_timeout + self.request_timeout),
        )
        with self._lock:
            self._streams[kind.label] = response
        if stopping.is_set():  # stop() ran between the request and the registration above
            shutdown_stream(response)
        delivered = False
        try:
            for line in iter_resp_lines(response):
                if not line.strip():
                    continue
                event = json.loads(line)
                kind_of_event, obj = event.get("type"), event.get("object") or {}
                if kind_of_event == "ERROR":
                    if obj.get("code") == 410:  # our resourceVersion is too old: list again
                        return None, delivered
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                delivered = True
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind_of_event == "BOOKMARK":
                    continue
                with self._lock:
                    if kind_of_event == "DELETED":
                        self._objects[kind.label].pop(_name(obj), None)
                    else:
                        self._objects[kind.label][_name(obj)] = obj
                self._publish(kind)
            return version, delivered
        finally:
            with self._lock:
                self._streams.pop(kind.label, None)
            response.release_conn()

    # -- the view --------------------------------------------------------------------------------

    def _publish(self, kind: _Kind) -> None:
        """Turn the raw objects of `kind` into the view's state."""
        with self._lock:
            objects = dict(self._objects[kind.label])
        by_name = [objects[name] for name in sorted(objects)]
        if not kind.optional:
            self._update(
                kind,
                deployments=tuple(DeploymentState.from_json(raw) for raw in by_name),
                deployment_known=True,
                deployment_error=None,
            )
            return
        self._update(
            kind,
            scaled_objects=tuple(ScaledObjectState.from_json(raw) for raw in by_name),
            scaled_object_known=True,
            keda_installed=True,
            scaled_object_error=None,
        )

    def _crd_absent(self) -> None:
        self._update(
            self.kinds[1],
            scaled_objects=(),
            scaled_object_known=True,
            keda_installed=False,
            scaled_object_error=None,
        )

    def _failed(self, kind: _Kind, exc: BaseException) -> None:
        error = describe_failure(exc, kind.label + "s", self.namespace)
        self._update(kind, **_unknown(kind, error))

    def _update(self, kind: _Kind, **changes: Any) -> None:
        with self._lock:
            before = self._view
            after = replace(before, **changes)
            if after == before:
                return
            # Logged before the view is published: whoever sees the new view finds its log line.
            log_change(kind.label, kind.name, before, after, self.scale_from_zero_flag)
            self._view = after
            self.updates += 1


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def _unknown(kind: _Kind, error: str) -> dict[str, Any]:
    """The view changes that say: no data about this kind, because of `error`."""
    if kind.optional:
        return {"scaled_object_known": False, "scaled_object_error": error}
    return {"deployment_known": False, "deployment_error": error}
