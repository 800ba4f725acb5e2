"""`tasklane scale --replicas N | --resume [--release R] [--pool NAME] | [--deployment NAME]
[--namespace NS] [--kubeconfig PATH] [--timeout S]`: set a worker pool's size from a laptop or a
pod.

The Deployment is --deployment, else the one the release's chart labelled as its workers
(`app.kubernetes.io/instance=R,app.kubernetes.io/component=worker`, plus
`tasklane.io/pool=NAME` with --pool; listed through the API, so fullnameOverride and long
release names need nothing more: RBAC `list deployments`), else the Deployments
TASKLANE_WORKER_SELECTOR matches (as the chart sets it: the release's pools, --pool picking
one), else TASKLANE_WORKER_DEPLOYMENT. Several matching Deployments need --pool (exit 2 names
the pools); --pool with neither --release nor TASKLANE_WORKER_SELECTOR takes the namespace's one
worker Deployment of that pool. Namespace and configuration: the rule of app/cli_kube.py
(--namespace, else TASKLANE_NAMESPACE, else the kubeconfig context's or the pod's, else
"default").

Exit status (app/core/kubernetes/calls.py, scaling.py): 0 done, 1 other API error, 2 usage or no
configuration, 3 Deployment not found, 4 forbidden (RBAC), 5 API server unreachable, 6 --resume
with no ScaledObject.
"""

from __future__ import annotations

import argparse
import sys

from app.cli_kube import add_connection_arguments, connect
from app.cli_types import integer
from app.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `scale` subcommand's options."""
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument(
        "--replicas",
        type=_replicas,
        help="worker replicas (with KEDA: pauses autoscaling at this count)",
    )
    size.add_argument(
        "--resume",
        action="store_true",
        help="remove KEDA's pause annotation: autoscaling takes over again",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--release", help="Helm release: scales the Deployment its chart labels as the workers"
    )
    parser.add_argument(
        "--pool",
        help="worker pool (the chart's tasklane.io/pool label: 'default' is celery.worker's, "
        "else a celery.workerPools name); needed when the release has several pools",
    )
    target.add_argument(
        "--deployment", help="worker Deployment name (default: TASKLANE_WORKER_DEPLOYMENT)"
    )
    parser.add_argument(
        "--scaled-object",
        default=None,
        help="KEDA ScaledObject name (default: TASKLANE_SCALED_OBJECT, else the Deployment's; "
        "any ScaledObject targeting the Deployment is found too)",
    )
    add_connection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Scale, pause or resume as args say; prints the outcome, returns the exit status."""
    from app.core.kubernetes.client import KubeConfigError
    from app.core.kubernetes.scaling import EXIT_USAGE, ScaleError, WorkerScaler

    try:
        settings = Settings()
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if args.deployment and args.pool:
        return _fail("--deployment names the Deployment: give it without --pool", EXIT_USAGE)
    from_settings = not (args.deployment or args.release or args.pool)
    # TASKLANE_WORKER_SELECTOR (the api pod's, as the chart sets it) wins over the one name.
    by_labels = bool(args.release or args.pool or (from_settings and settings.worker_selector))
    deployment = args.deployment or (None if by_labels else settings.worker_deployment)
    if not (deployment or by_labels):
        return _fail(
            "name the worker Deployment: --release R [--pool NAME] (found by the chart's "
            "labels), --deployment NAME, TASKLANE_WORKER_SELECTOR or TASKLANE_WORKER_DEPLOYMENT",
            EXIT_USAGE,
        )
    try:
        connection, namespace = connect(args, settings)
    except KubeConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    scaled_object = args.scaled_object or (settings.scaled_object if from_settings else None)
    try:
        if deployment:
            scaler = WorkerScaler(
                connection.api_client(),
                namespace=namespace,
                deployment=deployment,
                scaled_object=scaled_object,
                request_timeout=args.timeout,
            )
        else:
            scaler = WorkerScaler.for_release(
                connection.api_client(),
                namespace=namespace,
                release=args.release,
                pool=args.pool,
                selector=settings.worker_selector,
                scaled_object=scaled_object,
                request_timeout=args.timeout,
            )
        outcome = scaler.resume() if args.resume else scaler.scale(args.replicas)
    except ScaleError as exc:
        return _fail(str(exc), exc.exit_code)
    for line in outcome.lines():
        print(line)
    return 0


def _fail(message: str, code: int) -> int:
    print(f"tasklane scale: {message}", file=sys.stderr)
    return code


_replicas = integer(0)
