"""What Kubernetes says about the worker pools, and what that means for routing.

Two objects matter per pool (DESIGN.md §6): its worker Deployment, whose `spec.replicas` is what
`kubectl scale` sets (status.replicas / readyReplicas: what runs) and whose `tasklane.io/queues`
annotation (the chart's) names the queues it consumes, and, when KEDA owns it, its ScaledObject
(minReplicaCount, maxReplicaCount and the pause annotations). They are parsed from the API's
JSON into frozen values. A PoolView is one Deployment with the ScaledObject targeting it; the
KubeView holds every followed Deployment and ScaledObject plus what could not be read, and
answers per queue: a queue is held at zero only when every pool consuming it is, and scales
from zero when any pool consuming it does. The verdicts are pure functions of a view, so
routing stays a cache lookup.

Heartbeats remain the truth of who consumes a queue (monitor.py); Kubernetes only adds what
heartbeats cannot say quickly or at all: that the pool is being held at zero right now (its
workers are draining while their heartbeats are still fresh), and whether an autoscaler will
start a worker for a queued task (scale-from-zero).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: KEDA holds the target at this many replicas (and stops autoscaling) while the annotation is set.
PAUSED_REPLICAS = "autoscaling.keda.sh/paused-replicas"
#: KEDA >= 2.13: "true" stops autoscaling at the current replica count.
PAUSED = "autoscaling.keda.sh/paused"
KEDA_GROUP = "keda.sh"
KEDA_VERSION = "v1alpha1"
KEDA_PLURAL = "scaledobjects"
#: KEDA's defaults when the ScaledObject leaves the counts out.
KEDA_DEFAULT_MIN = 0
KEDA_DEFAULT_MAX = 100
#: The chart's annotation on each worker Deployment: the queues its pods consume ("a,b").
QUEUES_ANNOTATION = "tasklane.io/queues"


def _int(value: object, default: int) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True, kw_only=True)
class DeploymentState:
    """The worker Deployment as the API server last described it."""

    name: str
    #: spec.replicas: what the Deployment is asked to run (the API server defaults it to 1).
    replicas: int
    #: status.replicas: pods that exist, terminating ones included.
    current_replicas: int
    #: status.readyReplicas.
    ready_replicas: int
    #: The queues its pods consume (QUEUES_ANNOTATION); None: not annotated (a Deployment not
    #: from this chart version, e.g. TASKLANE_WORKER_DEPLOYMENT of an older release), taken to
    #: consume every queue, as the one worker Deployment always did.
    queues: frozenset[str] | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> DeploymentState:
        spec, status = _mapping(obj.get("spec")), _mapping(obj.get("status"))
        metadata = _mapping(obj.get("metadata"))
        listed = _mapping(metadata.get("annotations")).get(QUEUES_ANNOTATION)
        return cls(
            name=str(metadata.get("name", "")),
            replicas=_int(spec.get("replicas", 1), 1),
            current_replicas=_int(status.get("replicas", 0), 0),
            ready_replicas=_int(status.get("readyReplicas", 0), 0),
            queues=(
                frozenset(q.strip() for q in listed.split(",") if q.strip())
                if isinstance(listed, str)
                else None
            ),
        )

    def consumes(self, queue: str) -> bool:
        return self.queues is None or queue in self.queues

    def as_dict(self) -> dict[str, object]:
        return {
            "replicas": self.replicas,
            "current_replicas": self.current_replicas,
            "ready_replicas": self.ready_replicas,
            "queues": sorted(self.queues) if self.queues is not None else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaledObjectState:
    """A KEDA ScaledObject: its bounds, its target and whether it is paused."""

    name: str
    #: spec.scaleTargetRef.name / kind (kind defaults to Deployment).
    target: str
    target_kind: str
    min_replicas: int
    max_replicas: int
    #: The paused-replicas annotation as a number (None: absent or not a number).
    paused_replicas: int | None
    #: The paused annotation is "true" (autoscaling stopped at the current count).
    paused: bool

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ScaledObjectState:
        metadata, spec = _mapping(obj.get("metadata")), _mapping(obj.get("spec"))
        annotations = _mapping(metadata.get("annotations"))
        target = _mapping(spec.get("scaleTargetRef"))
        # A value KEDA cannot parse pauses nothing; treat it as absent.
        paused_replicas = _int(annotations.get(PAUSED_REPLICAS), -1)
        return cls(
            name=str(metadata.get("name", "")),
            target=str(target.get("name", "")),
            target_kind=str(target.get("kind") or "Deployment"),
            min_replicas=_int(spec.get("minReplicaCount", KEDA_DEFAULT_MIN), KEDA_DEFAULT_MIN),
            max_replicas=_int(spec.get("maxReplicaCount", KEDA_DEFAULT_MAX), KEDA_DEFAULT_MAX),
            paused_replicas=paused_replicas if paused_replicas >= 0 else None,
            paused=str(annotations.get(PAUSED, "")).lower() == "true",
        )

    @property
    def autoscaling(self) -> bool:
        """Is KEDA driving the replica count (neither pause annotation set)?"""
        return self.paused_replicas is None and not self.paused

    def targets(self, deployment: str) -> bool:
        return self.target == deployment and self.target_kind == "Deployment"

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "paused_replicas": self.paused_replicas,
            "paused": self.paused,
            "autoscaling": self.autoscaling,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolView:
    """One worker pool: its Deployment and the ScaledObject targeting it. `*_known`: the last
    list of that kind answered (the object may still be absent: None). Unknown (never read, or
    the last read failed) means: no data, routing falls back to heartbeats and
    TASKLANE_SCALE_FROM_ZERO."""

    namespace: str
    deployment_name: str
    #: The ScaledObject name looked for first (any one targeting the Deployment is taken).
    scaled_object_name: str
    deployment: DeploymentState | None = None
    deployment_known: bool = False
    scaled_object: ScaledObjectState | None = None
    scaled_object_known: bool = False
    #: Does the API serve keda.sh/v1alpha1 ScaledObjects? (None: not asked yet, or no answer.)
    keda_installed: bool | None = None
    deployment_error: str | None = None
    scaled_object_error: str | None = None

    def consumes(self, queue: str) -> bool:
        """Do this pool's pods consume `queue`? (A Deployment not read yet: assumed so.)"""
        deployment = self.deployment if self.deployment_known else None
        return deployment is None or deployment.consumes(queue)

    @property
    def own_scaled_object(self) -> ScaledObjectState | None:
        """The followed ScaledObject when it exists and scales the worker Deployment."""
        so = self.scaled_object if self.scaled_object_known else None
        return so if so is not None and so.targets(self.deployment_name) else None

    def scale_from_zero(self) -> bool | None:
        """Will KEDA start a worker for a queued task? (None: no data about ScaledObjects.)"""
        if not self.scaled_object_known:
            return None
        so = self.own_scaled_object
        return so is not None and so.autoscaling and so.min_replicas == 0

    def held_at_zero(self, scale_from_zero_flag: bool) -> bool:
        """Is the pool being held at zero replicas: `kubectl scale --replicas=0` with no
        autoscaler, or KEDA paused at 0? Its workers are then draining, whatever their
        heartbeats say. An autoscaler resting at zero (KEDA min 0) is not holding."""
        so = self.own_scaled_object
        if so is not None and so.paused_replicas is not None:
            return so.paused_replicas == 0
        deployment = self.deployment if self.deployment_known else None
        if deployment is None or deployment.replicas != 0:
            return False
        if self.scaled_object_known:
            return so is None or not so.autoscaling
        # ScaledObjects unreadable: the flag tells whether zero is an autoscaler's resting state.
        return not scale_from_zero_flag

    def describe(self, scale_from_zero_flag: bool) -> dict[str, object]:
        """For GET /api/tasks/executors and `tasklane status`."""
        so = self.scaled_object if self.scaled_object_known else None
        deployment = self.deployment if self.deployment_known else None
        from_objects = self.scale_from_zero()
        return {
            "enabled": True,
            "namespace": self.namespace,
            "deployment": {
                "name": self.deployment_name,
                "known": self.deployment_known,
                "found": deployment is not None if self.deployment_known else None,
                **(deployment.as_dict() if deployment is not None else {}),
                "error": self.deployment_error,
            },
            "scaled_object": {
                "name": so.name if so is not None else self.scaled_object_name,
                "known": self.scaled_object_known,
                "keda_installed": self.keda_installed,
                "found": so is not None if self.scaled_object_known else None,
                **(so.as_dict() if so is not None else {}),
                "error": self.scaled_object_error,
            },
            "held_at_zero": self.held_at_zero(scale_from_zero_flag),
            "scale_from_zero": from_objects if from_objects is not None else scale_from_zero_flag,
            "scale_from_zero_source": "kubernetes" if from_objects is not None else "flag",
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeView:
    """Every followed worker Deployment and the namespace's ScaledObjects, as the watch last
    saw them. The Deployments are one by name (TASKLANE_WORKER_DEPLOYMENT: `selector` None) or
    all the chart labelled as the release's workers (TASKLANE_WORKER_SELECTOR); `pools` pairs
    each with the ScaledObject targeting it. `*_known` / `*_error` / `keda_installed` as in
    PoolView, for all objects of the kind at once (they come from one list)."""

    namespace: str
    #: The Deployment followed by name ("" when followed by `selector`).
    deployment_name: str = ""
    #: The ScaledObject name looked for first (by name: TASKLANE_SCALED_OBJECT, else the
    #: Deployment's; by selector: each Deployment's own name, as the chart names them).
    scaled_object_name: str = ""
    #: The label selector the Deployments are listed by (None: by name).
    selector: str | None = None
    deployments: tuple[DeploymentState, ...] = ()
    deployment_known: bool = False
    scaled_objects: tuple[ScaledObjectState, ...] = ()
    scaled_object_known: bool = False
    keda_installed: bool | None = None
    deployment_error: str | None = None
    scaled_object_error: str | None = None
    #: Derived from the fields above once per view (routing reads it on every request).
    pools: tuple[PoolView, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pools", self._pair())

    def _pair(self) -> tuple[PoolView, ...]:
        by_name = {deployment.name: deployment for deployment in self.deployments}
        names = sorted(by_name) if self.selector is not None else [self.deployment_name]
        return tuple(
            PoolView(
                namespace=self.namespace,
                deployment_name=name,
                scaled_object_name=preferred,
                deployment=by_name.get(name),
                deployment_known=self.deployment_known,
                scaled_object=next(
                    (
                        so
                        # The preferred name first, then by name: one stable choice if several
                        # target the Deployment.
                        for so in sorted(
                            self.scaled_objects, key=lambda so: (so.name != preferred, so.name)
                        )
                        if so.targets(name)
                    ),
                    None,
                ),
                scaled_object_known=self.scaled_object_known,
                keda_installed=self.keda_installed,
                deployment_error=self.deployment_error,
                scaled_object_error=self.scaled_object_error,
            )
            for name in names
            for preferred in [self.scaled_object_name if self.selector is None else name]
        )

    @property
    def deployment(self) -> DeploymentState | None:
        """The one followed Deployment (by name, or the only one the selector matched)."""
        return self.pools[0].deployment if len(self.pools) == 1 else None

    def consuming(self, queue: str | None) -> tuple[PoolView, ...]:
        """The pools consuming `queue` (None: every pool)."""
        return tuple(p for p in self.pools if queue is None or p.consumes(queue))

    def held(self, scale_from_zero_flag: bool) -> tuple[PoolView, ...]:
        """The pools held at zero right now (their pods are draining)."""
        return tuple(p for p in self.pools if p.held_at_zero(scale_from_zero_flag))

    def held_at_zero(self, scale_from_zero_flag: bool, queue: str | None = None) -> bool:
        """Is `queue` held at zero: some pool consumes it and every such pool is held? (None:
        is any pool held?) A queue of a held pool that another, running pool also consumes is
        still served."""
        pools = self.consuming(queue)
        held = [p.held_at_zero(scale_from_zero_flag) for p in pools]
        return any(held) if queue is None else bool(held) and all(held)

    def scale_from_zero(self, queue: str | None = None) -> bool | None:
        """Will KEDA start a worker for a task queued on `queue`: does a pool consuming it have
        an autoscaling ScaledObject with min 0? (None: no data about ScaledObjects; queue None:
        does any pool scale from zero?)"""
        if not self.scaled_object_known:
            return None
        return any(p.scale_from_zero() for p in self.consuming(queue))

    def describe(self, scale_from_zero_flag: bool) -> dict[str, object]:
        """For GET /api/tasks/executors and `tasklane status`: the view of each pool, and the
        verdicts over all of them."""
        from_objects = self.scale_from_zero()
        pools = [
            {**pool.describe(scale_from_zero_flag), "queues": _queues(pool)} for pool in self.pools
        ]
        # One pool (always so by name): its objects at the top too, where they were before pools.
        single = (
            {key: pools[0][key] for key in ("deployment", "scaled_object")}
            if len(pools) == 1
            else {}
        )
        return {
            "enabled": True,
            "namespace": self.namespace,
            "selector": self.selector,
            **single,
            "pools": pools,
            "deployment_error": self.deployment_error,
            "scaled_object_error": self.scaled_object_error,
            "held_at_zero": self.held_at_zero(scale_from_zero_flag),
            "scale_from_zero": from_objects if from_objects is not None else scale_from_zero_flag,
            "scale_from_zero_source": "kubernetes" if from_objects is not None else "flag",
        }


def _queues(pool: PoolView) -> list[str] | None:
    deployment = pool.deployment if pool.deployment_known else None
    return sorted(deployment.queues) if deployment and deployment.queues is not None else None


#: A ReplicaSet pod's name: <deployment>-<pod-template-hash>-<5 random characters>.
_POD_SUFFIX = r"-[a-z0-9]{1,10}-[a-z0-9]{5}"


@functools.lru_cache(maxsize=64)
def pod_matcher(deployment: str) -> re.Pattern[str]:
    """Matches the hostname part of a worker node name (`celery@<pod>`, Celery's default
    `celery@%h` in a pod) when the pod belongs to `deployment`."""
    return re.compile(re.escape(deployment) + _POD_SUFFIX)


def runs_in(hostname: str, matcher: re.Pattern[str]) -> bool:
    """Is the worker `hostname` (a Celery node name) a pod that `matcher` describes?"""
    return matcher.fullmatch(hostname.rpartition("@")[2]) is not None
