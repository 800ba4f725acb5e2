"""The autoscaling model's rules on synthetic inputs (no process, no Redis): formula parsing,
activation, KEDA's 0 <-> 1 and cooldown, the HPA's tolerance, stabilization, rate policies and
clamps, reading a ScaledObject, reading a trigger's address, and which pod Kubernetes deletes."""

from __future__ import annotations

from typing import Any

import pytest

from scripts.harness.autoscaling.autoscaler import (
    Autoscaler,
    Policy,
    ScalingRules,
    ScalingSpec,
    is_active,
    keda_replicas,
    metric_proposal,
    rate_limited,
    stabilize,
)
from scripts.harness.autoscaling.formula import FormulaError, parse_formula
from scripts.harness.autoscaling.replicaset import PodView, deletion_order
from scripts.harness.autoscaling.triggers import RedisTrigger

TRIGGERS = ("queued_heavy", "active_heavy", "queued_light", "active_light")


def scaled_object(**changes: Any) -> dict[str, Any]:
    """A ScaledObject shaped like the chart's, with `changes` merged into spec / advanced."""
    modifiers = {
        "formula": " + ".join(TRIGGERS),
        "target": "2",
        "metricType": "AverageValue",
        **changes.pop("modifiers", {}),
    }
    behavior = changes.pop("behavior", {"scaleDown": {"stabilizationWindowSeconds": 5}})
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "tl-tasklane-worker"},
        "spec": {
            "minReplicaCount": 0,
            "maxReplicaCount": 3,
            "pollingInterval": 1,
            "cooldownPeriod": 10,
            "advanced": {
                "horizontalPodAutoscalerConfig": {"behavior": behavior},
                "scalingModifiers": modifiers,
            },
            "triggers": [{"type": "redis", "name": name, "metadata": {}} for name in TRIGGERS],
            **changes,
        },
    }


def spec(**changes: Any) -> ScalingSpec:
    return ScalingSpec.from_scaled_object(scaled_object(**changes))


def load(queued: float = 0, active: float = 0) -> dict[str, float]:
    return {"queued_heavy": queued, "active_heavy": active, "queued_light": 0, "active_light": 0}


# -- formula ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("queued_heavy + active_heavy + queued_light + active_light", 10.0),
        ("queued_heavy * 2 + active_heavy", 14.0),
        ("(queued_heavy + active_heavy) / 2", 4.5),
        ("-queued_light + 1.5 - active_light", 0.5),
        ("3", 3.0),
    ],
)
def test_formula_evaluates_arithmetic_over_trigger_values(text: str, expected: float) -> None:
    values = {"queued_heavy": 5, "active_heavy": 4, "queued_light": 0, "active_light": 1}
    assert parse_formula(text, TRIGGERS).evaluate(values) == expected


@pytest.mark.parametrize(
    "text",
    [
        "max(queued_heavy, 1)",  # calls
        "queued_heavy ** 2",  # power
        "queued_heavy > 1",  # comparisons
        "queued_heavy if active_heavy else 1",
        "queued_heavy.real",  # attribute access
        "__import__('os')",
        "'3'",
        "True + queued_heavy",
        "queued_heavy // 2",
    ],
)
def test_formula_refuses_anything_but_plain_arithmetic(text: str) -> None:
    with pytest.raises(FormulaError):
        parse_formula(text, TRIGGERS)


def test_formula_refuses_a_name_that_is_not_a_trigger() -> None:
    with pytest.raises(FormulaError, match="queued_video"):
        parse_formula("queued_heavy + queued_video", TRIGGERS)


def test_formula_syntax_error_and_division_by_zero_are_formula_errors() -> None:
    with pytest.raises(FormulaError, match="does not parse"):
        parse_formula("queued_heavy +", TRIGGERS)
    with pytest.raises(FormulaError, match="divides by zero"):
        parse_formula("queued_heavy / active_heavy", TRIGGERS).evaluate(load(queued=1))


def test_formula_needs_a_value_for_every_trigger_it_names() -> None:
    with pytest.raises(FormulaError, match="active_heavy"):
        parse_formula("queued_heavy + active_heavy", TRIGGERS).evaluate({"queued_heavy": 1})


# -- reading the ScaledObject -------------------------------------------------------------------


def test_spec_reads_the_scaled_object_and_fills_hpa_defaults() -> None:
    read = spec()
    assert (read.min_replicas, read.max_replicas, read.hpa_min_replicas) == (0, 3, 1)
    assert (read.polling_interval, read.cooldown_period, read.target) == (1, 10, 2)
    assert read.activation_target == 0
    assert read.formula.names == frozenset(TRIGGERS)
    assert read.scale_down == ScalingRules(
        window=5, policies=(Policy(kind="Percent", value=100, period=15),)
    )
    assert read.scale_up.window == 0
    assert {(p.kind, p.value, p.period) for p in read.scale_up.policies} == {
        ("Percent", 100, 15),
        ("Pods", 4, 15),
    }


def test_spec_defaults_of_a_sparse_scaled_object() -> None:
    sparse = scaled_object(behavior={})
    for key in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
        del sparse["spec"][key]
    read = ScalingSpec.from_scaled_object(sparse)
    assert (read.min_replicas, read.max_replicas) == (0, 100)
    assert (read.polling_interval, read.cooldown_period, read.scale_down.window) == (30, 300, 300)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (scaled_object(modifiers={"formula": ""}), "needs advanced.scalingModifiers.formula"),
        (scaled_object(modifiers={"metricType": "Value"}), "metricType Value is not modelled"),
        ({"kind": "HorizontalPodAutoscaler"}, "expected a ScaledObject"),
    ],
)
def test_spec_refuses_what_the_model_does_not_cover(broken: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScalingSpec.from_scaled_object(broken)


# -- KEDA: activation, from zero, cooldown ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "activation", "active"),
    [(0, 0, False), (0.5, 0, True), (3, 3, False), (3.5, 3, True)],
)
def test_active_only_strictly_above_the_activation_target(
    value: float, activation: float, active: bool
) -> None:
    assert is_active(value, activation) is active


def test_activation_target_is_read_from_the_scaling_modifiers() -> None:
    read = spec(modifiers={"activationTarget": "4"})
    assert read.activation_target == 4
    assert Autoscaler(read).step(0, load(queued=4), 0).replicas == 0
    assert Autoscaler(read).step(0, load(queued=5), 0).replicas == 3


@pytest.mark.parametrize(("minimum", "expected"), [(0, 1), (2, 2)])
def test_keda_scales_from_zero_to_min_or_one(minimum: int, expected: int) -> None:
    read = spec(minReplicaCount=minimum)
    assert keda_replicas(read, active=True, replicas=0, last_active=None, now=0) == expected
    assert keda_replicas(read, active=True, replicas=3, last_active=None, now=0) == 3


def test_keda_scales_to_zero_only_once_the_cooldown_has_passed() -> None:
    read = spec()  # cooldownPeriod 10

    def after(seconds: float) -> int:
        return keda_replicas(read, active=False, replicas=1, last_active=100, now=100 + seconds)

    assert (after(5), after(10), after(10.5)) == (1, 1, 0)
    assert keda_replicas(read, active=False, replicas=2, last_active=None, now=0) == 0
    assert keda_replicas(read, active=False, replicas=0, last_active=None, now=0) == 0


def test_keda_never_scales_to_zero_with_a_minimum() -> None:
    read = spec(minReplicaCount=1)
    assert keda_replicas(read, active=False, replicas=1, last_active=None, now=1e6) == 1


# -- HPA: proposal, tolerance, stabilization, policies, clamps ----------------------------------


@pytest.mark.parametrize(
    ("value", "replicas", "expected"),
    [
        (9, 1, 5),  # ceil(9 / 2)
        (0, 3, 0),
        (2.1, 1, 1),  # ratio 1.05: within the 10 % tolerance, keep 1
        (2.3, 1, 2),  # ratio 1.15: outside, ceil(1.15)
        (19, 10, 10),  # ratio 0.95: keep 10
        (17, 10, 9),  # ratio 0.85: ceil(8.5)
    ],
)
def test_metric_proposal_is_ceil_of_value_over_target_outside_the_tolerance(
    value: float, replicas: int, expected: int
) -> None:
    assert metric_proposal(value, 2, replicas, 0.1) == expected


def test_stabilization_scales_up_at_once_and_down_to_the_highest_recent_proposal() -> None:
    history = [(0.0, 3), (1.0, 3), (2.0, 1)]
    assert stabilize(history, proposal=5, current=3, now=3, up_window=0, down_window=5) == 5
    assert stabilize(history, proposal=1, current=3, now=3, up_window=0, down_window=5) == 3
    # The window ends strictly after now - 5: the proposals at 0 and 1 no longer count.
    assert stabilize(history, proposal=1, current=3, now=6, up_window=0, down_window=5) == 1


def test_a_scale_up_window_takes_the_lowest_recent_proposal() -> None:
    history = [(0.0, 2), (1.0, 4)]
    assert stabilize(history, proposal=5, current=1, now=2, up_window=3, down_window=0) == 2


def test_default_scale_up_policy_allows_double_or_four_more_per_15_s() -> None:
    wide = spec(maxReplicaCount=100)

    def up(current: int, ups: list[tuple[float, int]], now: float = 20) -> int:
        return rate_limited(100, current=current, spec=wide, ups=ups, downs=[], now=now)

    assert (up(1, []), up(10, [])) == (5, 20)
    # 4 pods were added 5 s ago: the period started at 1, so 5 is still the ceiling.
    assert up(5, [(15.0, 4)]) == 5
    assert up(5, [(15.0, 4)], now=31) == 10


def test_scale_down_stops_at_the_hpa_minimum_and_up_at_the_maximum() -> None:
    read = spec()
    assert rate_limited(0, current=3, spec=read, ups=[], downs=[], now=0) == 1
    assert rate_limited(9, current=1, spec=read, ups=[], downs=[], now=0) == 3


def test_custom_policies_and_select_min() -> None:
    read = spec(
        behavior={
            "scaleDown": {
                "stabilizationWindowSeconds": 0,
                "selectPolicy": "Min",
                "policies": [
                    {"type": "Pods", "value": 1, "periodSeconds": 60},
                    {"type": "Percent", "value": 50, "periodSeconds": 60},
                ],
            },
            "scaleUp": {"selectPolicy": "Disabled"},
        },
        maxReplicaCount=10,
    )
    assert rate_limited(1, current=8, spec=read, ups=[], downs=[], now=0) == 7
    assert rate_limited(10, current=8, spec=read, ups=[], downs=[], now=0) == 8


# -- the two controllers over time --------------------------------------------------------------


def test_backlog_scales_zero_to_max_then_down_after_the_window_then_zero_after_cooldown() -> None:
    scaler = Autoscaler(spec())  # max 3, target 2, window 5, cooldown 10, polling 1
    replicas = 0
    timeline = []
    loads = [load(queued=9)] * 3 + [load(active=3)] * 3 + [load()] * 20
    for now, values in enumerate(loads):
        replicas = scaler.step(float(now), values, replicas).replicas
        timeline.append(replicas)
    # t=0: KEDA 0 -> 1, the HPA at once to ceil(9 / 2) = 5, clamped to max 3.
    # t=3..6: the proposal is 2, but t=2's proposal 5 is inside the 5 s window until t=7.
    assert timeline[:7] == [3] * 7
    # t=7..9: the highest proposal in the window is 2 (t=3..5); from t=10 only 0s: HPA min 1.
    assert timeline[7:10] == [2] * 3
    # Last activity at t=5: KEDA takes the last replica away once 5 + 10 < now, at t=16.
    assert timeline[10:16] == [1] * 6
    assert timeline[16:] == [0] * (len(loads) - 16)


def test_no_hpa_while_at_zero_and_activity_resets_the_cooldown() -> None:
    scaler = Autoscaler(spec())
    first = scaler.step(0, load(), 0)
    assert (first.replicas, first.proposal, first.active) == (0, None, False)
    assert scaler.step(1, load(queued=1), 0).replicas == 1
    assert scaler.step(8, load(), 1).replicas == 1
    assert scaler.step(9, load(active=1), 1).replicas == 1  # active again at 9
    assert scaler.step(15, load(), 1).replicas == 1  # 1 + 10 < 15, but 9 + 10 is not
    assert scaler.step(19.5, load(), 1).replicas == 0


def test_hpa_sync_period_limits_how_often_the_hpa_resizes() -> None:
    scaler = Autoscaler(spec(maxReplicaCount=10), hpa_sync_period=15)
    assert scaler.step(0, load(queued=4), 0).replicas == 2  # KEDA to 1, HPA's first sync to 2
    held = scaler.step(1, load(queued=12), 2)
    assert (held.replicas, held.proposal) == (2, None)
    assert scaler.step(15, load(queued=12), 2).replicas == 6


def test_above_max_goes_to_max_without_reading_the_metric() -> None:
    decision = Autoscaler(spec()).step(0, load(queued=1), 7)
    assert (decision.replicas, decision.proposal) == (3, None)


# -- triggers and pods --------------------------------------------------------------------------


def test_redis_trigger_takes_its_address_from_the_scale_target_container() -> None:
    manifest = {
        "type": "redis",
        "name": "active_heavy",
        "metadata": {
            "addressFromEnv": "REDIS_ADDRESS",
            "listName": "tasklane:active:heavy",
            "databaseIndex": "3",
        },
    }
    trigger = RedisTrigger.from_manifest(manifest, {"REDIS_ADDRESS": "127.0.0.1:6380"})
    assert (trigger.host, trigger.port, trigger.database) == ("127.0.0.1", 6380, 3)
    assert trigger.list_name == "tasklane:active:heavy"
    with pytest.raises(ValueError, match="REDIS_ADDRESS"):
        RedisTrigger.from_manifest(manifest, {})


@pytest.mark.parametrize(
    "trigger",
    [
        {"type": "rabbitmq", "name": "q", "metadata": {}},
        {"type": "redis", "name": "q", "metadata": {}, "authenticationRef": {"name": "a"}},
        {"type": "redis", "name": "q", "metadata": {"enableTLS": "true", "address": "h:1"}},
    ],
)
def test_redis_trigger_refuses_what_the_local_reader_cannot_honour(
    trigger: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match="q"):
        RedisTrigger.from_manifest(trigger, {})


def pod(name: str, created: float, ready: float | None, uid: str = "") -> PodView:
    return PodView(name=name, uid=uid or name, created=created, ready_since=ready)


def test_pods_not_ready_are_deleted_first_then_the_most_recently_ready() -> None:
    now = 100.0
    old, young, starting = pod("old", 0, 1), pod("young", 90, 95), pod("starting", 99, None)
    assert [p.name for p in deletion_order([old, young, starting], now)] == [
        "starting",
        "young",
        "old",
    ]


def test_pods_ready_about_as_long_are_ordered_by_uid_not_age() -> None:
    # 5 s and 6 s ago share log2 rank (2^32 ns ~ 4.3 s .. 8.6 s): Kubernetes picks by UID.
    now = 100.0
    a = pod("older", 0, 94, uid="b")
    b = pod("newer", 0, 95, uid="a")
    assert [p.name for p in deletion_order([a, b], now)] == ["newer", "older"]
    older_uid_first = pod("older", 0, 94, uid="0")
    assert [p.name for p in deletion_order([older_uid_first, b], now)] == ["older", "newer"]
