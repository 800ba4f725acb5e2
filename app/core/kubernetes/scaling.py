"""Scale or pause the worker pool the way its owner expects (`tasklane scale`).

Who owns the replica count decides how to change it (DESIGN.md §6): with a KEDA ScaledObject
targeting the worker Deployment, a `kubectl scale` is undone at KEDA's next poll, so the pool is
paused with the `autoscaling.keda.sh/paused-replicas` annotation (KEDA then holds that count and
stops autoscaling) and resumed by removing it; without one, the Deployment's scale subresource is
patched, as `kubectl scale` does. The chart omits spec.replicas, so a later `helm upgrade` keeps
the count either way.

Every failure is a ScaleError carrying the exit status `tasklane scale` returns (EXIT_*, shared
with the other commands in calls.py), with a message that says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException

from app.core.kubernetes.calls import (
    EXIT_API_ERROR,
    EXIT_FORBIDDEN,
    EXIT_NOT_FOUND,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    ApiCaller,
    ApiCallError,
)
from app.core.kubernetes.state import (
    KEDA_GROUP,
    KEDA_PLURAL,
    KEDA_VERSION,
    PAUSED,
    PAUSED_REPLICAS,
    DeploymentState,
    ScaledObjectState,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = [
    "EXIT_API_ERROR",
    "EXIT_FORBIDDEN",
    "EXIT_NOTHING_TO_RESUME",
    "EXIT_NOT_FOUND",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "POOL_LABEL",
    "ScaleError",
    "ScaleOutcome",
    "WorkerScaler",
    "release_worker_selector",
]

#: --resume, but no ScaledObject targets the Deployment: nothing is paused.
EXIT_NOTHING_TO_RESUME = 6

#: The chart's selector labels (charts/tasklane _helpers.tpl tasklane.selectorLabels): a
#: release's worker Deployments are found by these, whatever fullnameOverride or the length of
#: the release name made of their names.
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
WORKER_COMPONENT = "worker"
#: The worker pool a Deployment runs (_helpers.tpl tasklane.workerPool.labels): "default" for
#: celery.worker's, the pool's name for each of celery.workerPools.
POOL_LABEL = "tasklane.io/pool"


def release_worker_selector(release: str | None, pool: str | None = None) -> str:
    """The labelSelector matching the worker Deployment(s) of the Helm release `release` (None:
    of any release), only pool `pool`'s when given."""
    terms = [f"{INSTANCE_LABEL}={release}"] if release else []
    terms.append(f"{COMPONENT_LABEL}={WORKER_COMPONENT}")
    return pool_selector(",".join(terms), pool)


def pool_selector(selector: str, pool: str | None) -> str:
    """`selector` narrowed to pool `pool`'s Deployment (unchanged when pool is None)."""
    return f"{selector},{POOL_LABEL}={pool}" if pool else selector


#: `tasklane scale` cannot do what was asked; `exit_code` says which failure it is.
ScaleError = ApiCallError


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleOutcome:
    """What changed, for the command's output."""

    namespace: str
    deployment: DeploymentState
    #: The ScaledObject that owns the count (None: the Deployment was scaled directly).
    scaled_object: ScaledObjectState | None
    #: The requested count (None: --resume).
    replicas: int | None
    #: The pause annotation before the change (KEDA path).
    paused_before: int | None = None

    def lines(self) -> list[str]:
        dep, so = self.deployment, self.scaled_object
        where = f"namespace {self.namespace}"
        if so is None:
            return [
                f"Deployment {dep.name} ({where}): replicas {dep.replicas} -> {self.replicas}.",
                "No KEDA ScaledObject targets it, so the scale subresource was patched "
                "(as `kubectl scale` does); a helm upgrade keeps this count.",
            ]
        owner = f"ScaledObject {so.name} (KEDA) scales Deployment {dep.name} ({where})"
        if self.replicas is None:
            if self.paused_before is None and not so.paused:
                return [f"{owner}: it was not paused; nothing changed."]
            return [
                f"{owner}: removed {PAUSED_REPLICAS}"
                + (f" (was {self.paused_before})" if self.paused_before is not None else "")
                + (f" and {PAUSED}" if so.paused else "")
                + ".",
                f"KEDA autoscales it again between {so.min_replicas} and {so.max_replicas} "
                f"replicas (now {dep.replicas}).",
            ]
        return [
            f"{owner}: set {PAUSED_REPLICAS}={self.replicas}"
            + (f" (was {self.paused_before})" if self.paused_before is not None else "")
            + ".",
            f"KEDA now holds the Deployment at {self.replicas} replicas (now {dep.replicas}) and "
            "stops autoscaling until `tasklane scale --resume`; a plain `kubectl scale` would be "
            "undone by KEDA, this annotation is how to pause it.",
        ]


class WorkerScaler:
    """Scales (or pauses / resumes) one worker Deployment through the Kubernetes API."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        deployment: str,
        scaled_object: str | None = None,
        request_timeout: float = 10.0,
    ) -> None:
        from kubernetes.client import AppsV1Api, CustomObjectsApi

        self.apps = AppsV1Api(api_client)
        self.custom = CustomObjectsApi(api_client)
        self.namespace = namespace
        self.deployment = deployment
        self.scaled_object = scaled_object or deployment
        self._call = ApiCaller(api_client.configuration.host, namespace, request_timeout)

    @classmethod
    def for_release(
        cls,
        api_client: ApiClient,
        *,
        namespace: str,
        release: str | None,
        pool: str | None = None,
        selector: str | None = None,
        scaled_object: str | None = None,
        request_timeout: float = 10.0,
    ) -> WorkerScaler:
        """The scaler of `release`'s worker Deployment (of pool `pool` when given), listed by
        the chart's labels; without a release, of the Deployments `selector` matches (the api
        pod's TASKLANE_WORKER_SELECTOR), else of any release.

        Raises ScaleError: EXIT_NOT_FOUND when no Deployment carries them, EXIT_USAGE when
        several do (name the pool with --pool, the release with --release, or the Deployment
        with --deployment).
        """
        scaler = cls(
            api_client,
            namespace=namespace,
            deployment="",
            scaled_object=scaled_object,
            request_timeout=request_timeout,
        )
        if release or not selector:
            selector = release_worker_selector(release, pool)
        else:
            selector = pool_selector(selector, pool)
        try:
            listed = scaler._call(
                "list deployments",
                scaler.apps.list_namespaced_deployment,
                namespace,
                label_selector=selector,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            listed = {}
        items = sorted(listed.get("items") or (), key=lambda item: item["metadata"]["name"])
        names = [item["metadata"]["name"] for item in items]
        whose = f"release {release}" if release else f"pool {pool}" if pool else selector
        if not names:
            raise ScaleError(
                f"no worker Deployment of {whose} in namespace {namespace} (none labelled "
                f"{selector}): check the release name (workers exist only with "
                "celery.enabled=true), the pool name and --namespace",
                EXIT_NOT_FOUND,
            )
        if len(names) > 1:
            raise ScaleError(
                _several(whose, namespace, items, pool_given=pool is not None), EXIT_USAGE
            )
        scaler.deployment = names[0]
        scaler.scaled_object = scaled_object or names[0]
        return scaler

    def scale(self, replicas: int) -> ScaleOutcome:
        """Pause KEDA at `replicas`, or scale the Deployment to it. Raises ScaleError."""
        deployment = self.read_deployment()
        found = self.find_scaled_object()
        if found is None:
            self._call(
                "patch deployments/scale",
                self.apps.patch_namespaced_deployment_scale,
                self.deployment,
                self.namespace,
                {"spec": {"replicas": replicas}},
            )
        else:
            self._annotate(found.name, {PAUSED_REPLICAS: str(replicas)})
        return self._outcome(deployment, found, replicas)

    def resume(self) -> ScaleOutcome:
        """Let KEDA autoscale again (remove both pause annotations). Raises ScaleError, with
        EXIT_NOTHING_TO_RESUME when no ScaledObject targets the Deployment."""
        deployment = self.read_deployment()
        found = self.find_scaled_object()
        if found is None:
            raise ScaleError(
                f"--resume: no KEDA ScaledObject targets Deployment {self.deployment} in "
                f"namespace {self.namespace}, so nothing is paused (KEDA is off for this "
                "release); set a count with --replicas N instead",
                EXIT_NOTHING_TO_RESUME,
            )
        if found.paused_replicas is not None or found.paused:
            self._annotate(found.name, {PAUSED_REPLICAS: None, PAUSED: None})
        return self._outcome(deployment, found, None)

    def _outcome(
        self, deployment: DeploymentState, found: ScaledObjectState | None, replicas: int | None
    ) -> ScaleOutcome:
        return ScaleOutcome(
            namespace=self.namespace,
            deployment=deployment,
            scaled_object=found,
            replicas=replicas,
            paused_before=found.paused_replicas if found is not None else None,
        )

    # -- reads -----------------------------------------------------------------------------------

    def read_deployment(self) -> DeploymentState:
        """The worker Deployment. Raises ScaleError (EXIT_NOT_FOUND when it does not exist)."""
        try:
            body = self._call(
                "get deployments",
                self.apps.read_namespaced_deployment,
                self.deployment,
                self.namespace,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            raise ScaleError(
                f"Deployment {self.deployment} not found in namespace {self.namespace}: check "
                "the name (or give --release R to find it by the chart's labels) and --namespace",
                EXIT_NOT_FOUND,
            ) from None
        return DeploymentState.from_json(body)

    def find_scaled_object(self) -> ScaledObjectState | None:
        """The ScaledObject that targets the Deployment: the one by its expected name, else any
        in the namespace whose scaleTargetRef names it. None: none, or KEDA not installed."""
        try:
            body = self._call(
                "get scaledobjects",
                self.custom.get_namespaced_custom_object,
                KEDA_GROUP,
                KEDA_VERSION,
                self.namespace,
                KEDA_PLURAL,
                self.scaled_object,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
        else:
            named = ScaledObjectState.from_json(body)
            if named.targets(self.deployment):
                return named
        try:
            listed = self._call(
                "list scaledobjects",
                self.custom.list_namespaced_custom_object,
                KEDA_GROUP,
                KEDA_VERSION,
                self.namespace,
                KEDA_PLURAL,
            )
        except ApiException as exc:
            if exc.status == 404:  # the keda.sh API is not served: no KEDA in this cluster
                return None
            raise
        for item in listed.get("items") or ():
            candidate = ScaledObjectState.from_json(item)
            if candidate.targets(self.deployment):
                return candidate
        return None

    # -- plumbing --------------------------------------------------------------------------------

    def _annotate(self, name: str, annotations: dict[str, str | None]) -> None:
        # A JSON merge patch: a null value removes the annotation.
        self._call(
            "patch scaledobjects",
            self.custom.patch_namespaced_custom_object,
            KEDA_GROUP,
            KEDA_VERSION,
            self.namespace,
            KEDA_PLURAL,
            name,
            {"metadata": {"annotations": annotations}},
        )


def _several(whose: str, namespace: str, items: list[dict[str, Any]], *, pool_given: bool) -> str:
    """The message for a selection that matched several worker Deployments: which ones, and
    the option that picks one (--pool by the pools' labels, else --release or --deployment)."""
    names = ", ".join(item["metadata"]["name"] for item in items)
    pools = sorted(
        {
            str(pool)
            for item in items
            if (pool := (item["metadata"].get("labels") or {}).get(POOL_LABEL))
        }
    )
    if pool_given:
        hint = "name the release with --release, or one with --deployment"
    elif pools:
        hint = f"name one with --pool ({', '.join(pools)}) or --deployment"
    else:
        hint = "name one with --deployment"
    return f"{whose} has several worker Deployments in namespace {namespace} ({names}): {hint}"
