"""Connecting to the Kubernetes API: the pod's service account in a cluster, else a kubeconfig.

The `kubernetes` package is imported here, lazily, only when Kubernetes awareness is on or a
`tasklane scale` runs: single mode and workers never load it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from urllib3.exceptions import HTTPError

from app.config import SERVICE_ACCOUNT_NAMESPACE

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, Configuration


#: Set by the kubelet in every pod: the in-cluster API server's address.
IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"


class KubeConfigError(Exception):
    """No usable Kubernetes configuration (neither in-cluster nor a kubeconfig)."""


@dataclass(frozen=True, slots=True)
class Connection:
    """A loaded configuration, where it came from, and the namespace it suggests."""

    configuration: Configuration
    #: The kubeconfig context's namespace, or the service account's (None: neither says).
    namespace: str | None
    source: str

    def api_client(self) -> ApiClient:
        from kubernetes.client import ApiClient

        return ApiClient(self.configuration)


def load_connection(kubeconfig: str | None = None) -> Connection:
    """In-cluster configuration inside a pod (unless a kubeconfig is named), else the kubeconfig
    (`kubeconfig`, $KUBECONFIG or ~/.kube/config).

    Raises KubeConfigError saying what was tried.
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get(IN_CLUSTER_ENV):
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as exc:
            raise KubeConfigError(f"in-cluster configuration failed: {exc}") from None
        namespace = _mounted_namespace()
        source = "in-cluster service account"
    else:
        # Read $KUBECONFIG now: the client library reads it once, when it is first imported.
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        try:
            config.load_kube_config(
                config_file=where, client_configuration=configuration, persist_config=False
            )
            _, active = config.list_kube_config_contexts(config_file=where)
        except (config.ConfigException, OSError, TypeError, ValueError) as exc:
            raise KubeConfigError(
                f"no Kubernetes configuration: not in a pod ({IN_CLUSTER_ENV} unset) and the "
                f"kubeconfig {where} cannot be used: {exc}"
            ) from None
        namespace = ((active or {}).get("context") or {}).get("namespace")
        source = f"kubeconfig {where}"
    # No urllib3 retries: they log a warning per attempt, and callers handle failures
    # themselves (the watcher retries with backoff, `tasklane scale` reports and exits).
    configuration.retries = 0
    return Connection(configuration, namespace, source)


def _mounted_namespace() -> str | None:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


def api_message(body: str | None) -> str:
    """The `message` of a Kubernetes Status body (the API server's own explanation)."""
    try:
        message = json.loads(body or "").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else (body or "").strip()[:300]


#: An unreachable, refusing or too slow API server (or a garbled answer), through the client.
UNREACHABLE: tuple[type[BaseException], ...] = (HTTPError, OSError, json.JSONDecodeError)


def describe_failure(exc: BaseException, what: str, namespace: str) -> str:
    """One sentence an operator can act on; its text before the first colon is its kind."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        if exc.status == 403:
            return (
                f"forbidden (403): this service account may not list/watch {what} in namespace "
                f"{namespace} (the chart's Role grants get/list/watch)"
            )
        if exc.status == 401:
            return "unauthorized (401): the service-account token was refused"
        return f"HTTP {exc.status} {exc.reason or ''}".strip()
    return f"API server unreachable: {innermost(exc)}"


def innermost(exc: BaseException) -> str:
    """The cause of a urllib3 failure (refused, timed out) rather than its retry wrapper."""
    reason = getattr(exc, "reason", None)
    return f"{type(reason).__name__}: {reason}" if reason else f"{type(exc).__name__}: {exc}"
