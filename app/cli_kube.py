"""The Kubernetes connection options of the commands that call the API (`tasklane scale`,
`tasklane secrets ensure`), and the one rule for their namespace: --namespace, else
TASKLANE_NAMESPACE, else the kubeconfig context's (or the pod's service-account) namespace, else
"default". Configuration: --kubeconfig, else in-cluster inside a pod, else $KUBECONFIG /
~/.kube/config (app/core/kubernetes/client.py).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import Settings
    from app.core.kubernetes.client import Connection


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--namespace, --kubeconfig and --timeout."""
    parser.add_argument("--namespace", "-n", default=None, help="namespace (see above)")
    parser.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, else ~/.kube)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for each API answer (default 10)",
    )


def connect(args: argparse.Namespace, settings: Settings) -> tuple[Connection, str]:
    """The loaded configuration and the namespace to act in. Raises KubeConfigError."""
    from app.core.kubernetes.client import load_connection

    connection = load_connection(args.kubeconfig)
    namespace = (
        args.namespace or settings.namespace or connection.namespace or settings.resolved_namespace
    )
    return connection, namespace
