"""A model of the two controllers that size the worker Deployment on a cluster: the KEDA operator
and the HorizontalPodAutoscaler KEDA creates for the ScaledObject. Neither can run here (no
cluster), so harness.py drives this model instead; every rule below is the one the real
controller applies, with the source it was taken from: KEDA 2.12 and later, the HPA of
Kubernetes 1.33 (the versions the chart requires and is validated against; see __init__.py).

KEDA (pkg/scaling/scale_handler.go, pkg/scaling/executor/scale_scaledobjects.go):
- every `pollingInterval` it reads every trigger; with `advanced.scalingModifiers` the triggers
  are combined by the formula into one composite metric, and the ScaledObject is *active* when
  that value > `scalingModifiers.activationTarget` (default 0);
- active with 0 replicas: scale to `minReplicaCount`, or 1 when that is 0 (scaleFromZeroOrIdle);
  the HPA takes it from there. Active at all: LastActiveTime = now;
- not active, replicas > 0, minReplicaCount 0: scale to 0 once LastActiveTime + cooldownPeriod
  lies in the past (or LastActiveTime was never set) — scaleToZeroOrIdle. Other scale-downs
  are the HPA's.
HPA (pkg/controller/podautoscaler/horizontal.go, replica_calculator.go), minReplicas =
max(1, minReplicaCount) and maxReplicas = maxReplicaCount as KEDA writes them:
- spec.replicas 0: scaling disabled; above max / below min: straight to max / min;
- external metric with an AverageValue target (KEDA's composite metric, `metricType:
  AverageValue`): ratio = value / (target * replicas); |1 - ratio| <= tolerance (0.1, the
  --horizontal-pod-autoscaler-tolerance default) keeps the count, else ceil(value / target);
- behavior: the stabilized recommendation is the current count pulled up to the *lowest*
  proposal of the scale-up window and down to the *highest* proposal of the scale-down window
  (so scale-up is immediate with the default 0 s window, and scale-down waits until every
  proposal of the window agrees); then the rate policies (defaults: up max(100 %, 4 pods) per
  15 s, down 100 % per 15 s) and the min/max clamps.
Simplifications, on purpose: the HPA syncs on the same tick as KEDA's poll (on a cluster every
15 s, --horizontal-pod-autoscaler-sync-period, reading KEDA's metrics server at that moment);
status.replicas is taken equal to spec.replicas (the ReplicaSet creates and deletes pod objects
at once; readiness does not matter for an external metric); scaler errors, fallback, paused
replicas and idleReplicaCount are not modelled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from scripts.harness.autoscaling.formula import Formula, parse_formula

#: kube-controller-manager --horizontal-pod-autoscaler-tolerance (default).
DEFAULT_TOLERANCE = 0.1
#: KEDA's defaults for fields a ScaledObject leaves out.
KEDA_DEFAULT_POLLING = 30
KEDA_DEFAULT_COOLDOWN = 300
KEDA_DEFAULT_MAX = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """One HPAScalingPolicy: at most `value` pods (or percent) per `period` seconds."""

    kind: Literal["Pods", "Percent"]
    value: int
    period: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalingRules:
    """HPAScalingRules of one direction, with the API server's defaults filled in."""

    window: float
    policies: tuple[Policy, ...]
    select: Literal["Max", "Min", "Disabled"] = "Max"

    @classmethod
    def parse(cls, rules: Mapping[str, Any] | None, *, up: bool) -> ScalingRules:
        """From a behavior.scaleUp/scaleDown mapping; missing fields get the HPA defaults."""
        rules = rules or {}
        if up:
            window = 0.0
            policies = (
                Policy(kind="Percent", value=100, period=15),
                Policy(kind="Pods", value=4, period=15),
            )
        else:
            window, policies = 300.0, (Policy(kind="Percent", value=100, period=15),)
        if "policies" in rules:
            policies = tuple(
                Policy(kind=p["type"], value=int(p["value"]), period=float(p["periodSeconds"]))
                for p in rules["policies"]
            )
        return cls(
            window=float(rules.get("stabilizationWindowSeconds", window)),
            policies=policies,
            select=rules.get("selectPolicy", "Max"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalingSpec:
    """What the model needs from a rendered ScaledObject."""

    name: str
    min_replicas: int
    max_replicas: int
    polling_interval: float
    cooldown_period: float
    formula: Formula
    #: The composite metric's AverageValue target (per replica).
    target: float
    activation_target: float
    scale_up: ScalingRules
    scale_down: ScalingRules
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def hpa_min_replicas(self) -> int:
        """KEDA writes minReplicas >= 1 into its HPA; 0 is KEDA's own business."""
        return max(1, self.min_replicas)

    @classmethod
    def from_scaled_object(cls, manifest: Mapping[str, Any]) -> ScalingSpec:
        """Read a keda.sh/v1alpha1 ScaledObject that uses scalingModifiers.

        Raises ValueError for what the model does not cover (no formula, a target type other
        than AverageValue), so a chart change cannot be silently mis-modelled.
        """
        if manifest.get("kind") != "ScaledObject":
            raise ValueError(f"expected a ScaledObject, got {manifest.get('kind')}")
        spec = manifest["spec"]
        advanced = spec.get("advanced", {})
        modifiers = advanced.get("scalingModifiers")
        if not modifiers or not modifiers.get("formula"):
            raise ValueError("the model needs advanced.scalingModifiers.formula")
        metric_type = modifiers.get("metricType", "AverageValue")
        if metric_type != "AverageValue":
            raise ValueError(f"scalingModifiers.metricType {metric_type} is not modelled")
        names = [trigger["name"] for trigger in spec["triggers"]]
        behavior = advanced.get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
        return cls(
            name=manifest["metadata"]["name"],
            min_replicas=int(spec.get("minReplicaCount", 0)),
            max_replicas=int(spec.get("maxReplicaCount", KEDA_DEFAULT_MAX)),
            polling_interval=float(spec.get("pollingInterval", KEDA_DEFAULT_POLLING)),
            cooldown_period=float(spec.get("cooldownPeriod", KEDA_DEFAULT_COOLDOWN)),
            formula=parse_formula(modifiers["formula"], names),
            target=float(modifiers["target"]),
            activation_target=float(modifiers.get("activationTarget") or 0),
            scale_up=ScalingRules.parse(behavior.get("scaleUp"), up=True),
            scale_down=ScalingRules.parse(behavior.get("scaleDown"), up=False),
        )


# -- pure rules ---------------------------------------------------------------------------------


def is_active(value: float, activation_target: float) -> bool:
    """KEDA with scalingModifiers: active while the composite value > activationTarget."""
    return value > activation_target


def keda_replicas(
    spec: ScalingSpec, *, active: bool, replicas: int, last_active: float | None, now: float
) -> int:
    """The count KEDA's scale executor sets (or leaves) for one poll."""
    if active:
        return (spec.min_replicas or 1) if replicas == 0 else replicas
    cooled = last_active is None or last_active + spec.cooldown_period < now
    if replicas > 0 and spec.min_replicas == 0 and cooled:
        return 0
    return replicas


def metric_proposal(value: float, target: float, replicas: int, tolerance: float) -> int:
    """GetExternalPerPodMetricReplicas: the HPA's proposal for an AverageValue target."""
    ratio = value / (target * replicas)
    if abs(1.0 - ratio) > tolerance:
        return math.ceil(value / target)
    return replicas


def stabilize(
    history: Sequence[tuple[float, int]],
    *,
    proposal: int,
    current: int,
    now: float,
    up_window: float,
    down_window: float,
) -> int:
    """stabilizeRecommendationWithBehaviors over earlier (time, proposal) pairs."""
    up = down = proposal
    for at, recommended in history:
        if at > now - up_window:
            up = min(up, recommended)
        if at > now - down_window:
            down = max(down, recommended)
    return min(max(current, up), down)


def _changed_within(events: Sequence[tuple[float, int]], period: float, now: float) -> int:
    return sum(change for at, change in events if at > now - period)


def rate_limited(
    desired: int,
    *,
    current: int,
    spec: ScalingSpec,
    ups: Sequence[tuple[float, int]],
    downs: Sequence[tuple[float, int]],
    now: float,
) -> int:
    """convertDesiredReplicasWithBehaviorRate: the scaling policies, then min/max."""
    if desired > current:
        limit = _limit(spec.scale_up, current, ups, downs, now, up=True)
        return min(desired, spec.max_replicas, max(limit, current))
    if desired < current:
        limit = _limit(spec.scale_down, current, ups, downs, now, up=False)
        return max(desired, spec.hpa_min_replicas, min(limit, current))
    return desired


def _limit(
    rules: ScalingRules,
    current: int,
    ups: Sequence[tuple[float, int]],
    downs: Sequence[tuple[float, int]],
    now: float,
    *,
    up: bool,
) -> int:
    if rules.select == "Disabled":
        return current
    proposals = []
    for policy in rules.policies:
        start = (
            current
            - _changed_within(ups, policy.period, now)
            + _changed_within(downs, policy.period, now)
        )
        if policy.kind == "Pods":
            proposals.append(start + policy.value if up else start - policy.value)
        elif up:
            proposals.append(math.ceil(start * (1 + policy.value / 100)))
        else:
            proposals.append(int(start * (1 - policy.value / 100)))
    # selectPolicy Max picks the policy allowing the largest change, Min the smallest.
    largest_change, smallest_change = (max, min) if up else (min, max)
    return (largest_change if rules.select == "Max" else smallest_change)(proposals)


# -- the controllers, with their memory ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One poll: the composite value, KEDA's activity, the HPA's proposal (None when the HPA
    did not compute one), the replica count set, and which rule set it."""

    time: float
    value: float
    active: bool
    proposal: int | None
    replicas: int
    reason: str


class Autoscaler:
    """KEDA + HPA for one ScaledObject. `step()` is deterministic given its arguments and the
    history of earlier steps; time is whatever clock the caller uses, in seconds."""

    def __init__(self, spec: ScalingSpec, *, hpa_sync_period: float | None = None) -> None:
        self.spec = spec
        #: Seconds between HPA syncs; None: on every KEDA poll (see the module docstring).
        self.hpa_sync_period = hpa_sync_period
        #: KEDA's status.lastActiveTime.
        self.last_active: float | None = None
        self._last_sync: float | None = None
        #: The HPA's (time, proposal) recommendations and its own scale events.
        self._history: list[tuple[float, int]] = []
        self._ups: list[tuple[float, int]] = []
        self._downs: list[tuple[float, int]] = []

    def step(self, now: float, triggers: Mapping[str, float], replicas: int) -> Decision:
        """One poll at `now` with each trigger's value, `replicas` being the current count."""
        spec = self.spec
        value = spec.formula.evaluate(triggers)
        active = is_active(value, spec.activation_target)
        keda = keda_replicas(
            spec, active=active, replicas=replicas, last_active=self.last_active, now=now
        )
        if active:
            self.last_active = now
        reason = "unchanged"
        if keda != replicas:
            reason = "keda: activated" if keda > replicas else "keda: cooldown over, to zero"
        period, last = self.hpa_sync_period, self._last_sync
        due = period is None or last is None or now - last >= period
        if keda == 0 or not due:
            return Decision(
                time=now, value=value, active=active, proposal=None, replicas=keda, reason=reason
            )
        self._last_sync = now
        proposal, desired, hpa_reason = self._hpa(now, value, keda)
        if desired != keda:
            self._record_scale(now, keda, desired)
            reason = hpa_reason if keda == replicas else f"{reason}, then {hpa_reason}"
        return Decision(
            time=now, value=value, active=active, proposal=proposal, replicas=desired, reason=reason
        )

    def _hpa(self, now: float, value: float, current: int) -> tuple[int | None, int, str]:
        spec = self.spec
        if current > spec.max_replicas:
            return None, spec.max_replicas, "hpa: above maxReplicas"
        if current < spec.hpa_min_replicas:
            return None, spec.hpa_min_replicas, "hpa: below minReplicas"
        proposal = metric_proposal(value, spec.target, current, spec.tolerance)
        stable = stabilize(
            self._history,
            proposal=proposal,
            current=current,
            now=now,
            up_window=spec.scale_up.window,
            down_window=spec.scale_down.window,
        )
        oldest = now - max(spec.scale_up.window, spec.scale_down.window)
        self._history = [(at, r) for at, r in self._history if at >= oldest]
        self._history.append((now, proposal))
        desired = rate_limited(
            stable, current=current, spec=spec, ups=self._ups, downs=self._downs, now=now
        )
        return proposal, desired, "hpa: scale up" if desired > current else "hpa: scale down"

    def _record_scale(self, now: float, before: int, after: int) -> None:
        # storeScaleEvent: only the HPA's own changes count against its rate policies.
        rules = self.spec.scale_up if after > before else self.spec.scale_down
        events = self._ups if after > before else self._downs
        longest = max((p.period for p in rules.policies), default=0.0)
        events[:] = [(at, change) for at, change in events if at > now - longest]
        events.append((now, abs(after - before)))
