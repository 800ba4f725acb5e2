"""Worker pools (celery.workerPools): one Deployment, ScaledObject (or HPA) and PDB per pool,
each over its own queues; every field a pool leaves out inherits from celery.worker; default
values render exactly the objects and names of the chart before pools existed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helpers import (
    CI_VALUES_DIR,
    KEDA_API,
    Manifest,
    container,
    env_map,
    find,
    get,
    pod_labels,
    pod_spec,
    render_chart,
    render_error,
    render_notes,
)

POOLS_FILE = CI_VALUES_DIR / "scaled-pools.yaml"
#: `kind/name` of every object the chart rendered before pools existed (main 58dbff0), per
#: values case, with and without the KEDA API served.
MAIN_OBJECTS: dict[str, list[str]] = json.loads(
    (Path(__file__).parent / "main_objects.json").read_text(encoding="utf-8")
)
HEAVY, LIGHT = "tl-tasklane-worker-heavy", "tl-tasklane-worker-light"
POOL = "tasklane.io/pool"


def _kinds_and_names(manifests: list[Manifest]) -> list[str]:
    return sorted(f"{m['kind']}/{m['metadata']['name']}" for m in manifests)


@pytest.mark.parametrize("case", sorted(MAIN_OBJECTS))
def test_default_pool_renders_the_same_objects_and_names_as_before_pools(case: str) -> None:
    values_file, _, keda = case.partition(" +")
    manifests = render_chart(
        values_files=() if values_file == "default" else (CI_VALUES_DIR / values_file,),
        api_versions=(KEDA_API,) if keda else (),
    )
    assert _kinds_and_names(manifests) == MAIN_OBJECTS[case]


def test_the_default_pool_keeps_its_selector_and_is_labelled_default() -> None:
    manifests = render_chart({"celery": {"enabled": True}})
    worker = get(manifests, "Deployment", "tl-tasklane-worker")
    # Immutable: the same selector as before pools, so upgrades keep the Deployment.
    assert worker["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "tasklane",
        "app.kubernetes.io/instance": "tl",
        "app.kubernetes.io/component": "worker",
    }
    assert worker["metadata"]["labels"][POOL] == "default"
    assert pod_labels(worker)[POOL] == "default"
    assert worker["metadata"]["annotations"]["tasklane.io/queues"] == "heavy,light"


def _pools() -> list[Manifest]:
    return render_chart(values_files=(POOLS_FILE,))


def _args(deployment: Manifest) -> dict[str, str]:
    args = container(deployment, "worker")["args"]
    return {args[i]: args[i + 1] for i in range(1, len(args) - 1, 2)}


def test_two_pools_render_two_deployments_over_their_own_queues() -> None:
    manifests = _pools()
    deployments = {m["metadata"]["name"] for m in find(manifests, "Deployment")}
    assert deployments == {"tl-tasklane-api", "tl-tasklane-beat", HEAVY, LIGHT}
    heavy, light = get(manifests, "Deployment", HEAVY), get(manifests, "Deployment", LIGHT)
    assert _args(heavy) == {"--queues": "heavy", "--concurrency": "1"}
    assert _args(light) == {"--queues": "light", "--concurrency": "8"}
    assert heavy["metadata"]["annotations"]["tasklane.io/queues"] == "heavy"
    for deployment, pool in ((heavy, "heavy"), (light, "light")):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector[POOL] == pool
        assert selector.items() <= pod_labels(deployment).items()
        assert deployment["metadata"]["labels"][POOL] == pool
    assert container(heavy, "worker")["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
    assert pod_spec(heavy)["terminationGracePeriodSeconds"] == 400
    assert pod_labels(light)["team"] == "notifications"
    assert "team" not in pod_labels(heavy)


def test_each_pool_scales_on_its_own_queues_lists() -> None:
    manifests = _pools()
    for name, queue, concurrency in ((HEAVY, "heavy", "1"), (LIGHT, "light", "8")):
        scaled = get(manifests, "ScaledObject", name)
        assert scaled["spec"]["scaleTargetRef"]["name"] == name
        lists = sorted(t["metadata"]["listName"] for t in scaled["spec"]["triggers"])
        expected = [queue, f"{queue}:3", f"{queue}:6", f"{queue}:9", f"tasklane:active:{queue}"]
        assert lists == sorted(expected)
        modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
        names = [f"queued_{queue}{suffix}" for suffix in ("", "_p3", "_p6", "_p9")]
        assert modifiers["formula"] == " + ".join([*names, f"active_{queue}"])
        assert modifiers["target"] == concurrency
    assert get(manifests, "ScaledObject", HEAVY)["spec"]["maxReplicaCount"] == 4
    assert get(manifests, "ScaledObject", LIGHT)["spec"]["maxReplicaCount"] == 10
    assert len(find(manifests, "TriggerAuthentication")) == 1


def test_each_pool_has_a_pdb_over_its_own_pods_only() -> None:
    manifests = _pools()
    deployments = [get(manifests, "Deployment", name) for name in (HEAVY, LIGHT)]
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        selector = get(manifests, "PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"]
        matched = [d for d in deployments if selector.items() <= pod_labels(d).items()]
        assert matched == [deployment]  # no pod falls under two PDBs


def test_one_podmonitor_selects_every_pool_and_labels_samples_by_pool() -> None:
    manifests = _pools()
    monitor = get(manifests, "PodMonitor", "tl-tasklane-worker")
    selector = monitor["spec"]["selector"]["matchLabels"]
    for name in (HEAVY, LIGHT):
        assert selector.items() <= pod_labels(get(manifests, "Deployment", name)).items()
    relabelings = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {
        "action": "replace",
        "sourceLabels": ["__meta_kubernetes_pod_label_tasklane_io_pool"],
        "targetLabel": "pool",
    } in relabelings


def _with_pools(*pools: dict[str, Any], **worker: Any) -> dict[str, Any]:
    return {"celery": {"enabled": True, "worker": worker, "workerPools": list(pools)}}


def test_a_pool_inherits_every_unset_field_and_its_own_settings_win() -> None:
    values = _with_pools(
        {"name": "big", "queues": ["heavy"], "resources": {"requests": {"cpu": "4"}}},
        concurrency=3,
        nodeSelector={"disk": "ssd"},
        tolerations=[{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
        pdb={"enabled": True, "maxUnavailable": 2},
    )
    manifests = render_chart(values, api_versions=(KEDA_API,))
    big = get(manifests, "Deployment", "tl-tasklane-worker-big")
    assert _args(big) == {"--queues": "heavy", "--concurrency": "3"}  # concurrency inherited
    # A map merges key by key: the pool's cpu, celery.worker's memory and limits.
    assert container(big, "worker")["resources"] == {
        "requests": {"cpu": "4", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }
    assert pod_spec(big)["nodeSelector"] == {"disk": "ssd"}
    assert pod_spec(big)["tolerations"][0]["key"] == "batch"
    assert (
        get(manifests, "PodDisruptionBudget", "tl-tasklane-worker-big")["spec"]["maxUnavailable"]
        == 2
    )
    assert get(manifests, "ScaledObject", "tl-tasklane-worker-big")["spec"]["cooldownPeriod"] == 600
    # The default pool is still there, unchanged.
    assert _args(get(manifests, "Deployment", "tl-tasklane-worker"))["--queues"] == "heavy,light"

    overriding = _with_pools(
        {
            "name": "big",
            "queues": ["heavy"],
            "concurrency": 1,
            "pdb": {"enabled": False},
            "autoscaling": {"keda": {"enabled": False}, "hpa": {"enabled": True}},
        },
        enabled=False,
        concurrency=3,
        queues=["light"],
    )
    manifests = render_chart(overriding, api_versions=(KEDA_API,))
    assert not find(manifests, "Deployment", "tl-tasklane-worker")
    assert not find(manifests, "PodDisruptionBudget", "tl-tasklane-worker-big")
    assert not find(manifests, "ScaledObject")
    assert (
        get(manifests, "HorizontalPodAutoscaler", "tl-tasklane-worker-big")["spec"][
            "scaleTargetRef"
        ]["name"]
        == "tl-tasklane-worker-big"
    )
    assert _args(get(manifests, "Deployment", "tl-tasklane-worker-big"))["--concurrency"] == "1"


def test_an_empty_list_clears_and_an_empty_map_inherits() -> None:
    values = _with_pools(
        {"name": "big", "queues": ["heavy"], "tolerations": [], "nodeSelector": {}},
        nodeSelector={"disk": "ssd"},
        tolerations=[{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
    )
    big = pod_spec(get(render_chart(values), "Deployment", "tl-tasklane-worker-big"))
    assert "tolerations" not in big
    assert big["nodeSelector"] == {"disk": "ssd"}


def test_two_pools_with_one_name_are_refused() -> None:
    message = render_error(
        _with_pools({"name": "x", "queues": ["heavy"]}, {"name": "x", "queues": ["light"]})
    )
    assert 'two pools are named "x"' in message


def test_a_pool_named_like_the_default_pool_is_refused() -> None:
    message = render_error(_with_pools({"name": "default", "queues": ["heavy"]}, enabled=False))
    assert 'a pool is named "default"' in message


@pytest.mark.parametrize(
    ("values", "queue"),
    [
        pytest.param(
            {**_with_pools({"name": "l", "queues": ["light"]}, enabled=False), "keda": True},
            "heavy",
            id="every-pool-scales-from-zero",
        ),
        pytest.param(
            {
                "celery": {
                    "enabled": True,
                    "executor": "celery",
                    "worker": {"enabled": False},
                    "workerPools": [{"name": "h", "queues": ["heavy"]}],
                }
            },
            "light",
            id="celery-executor-sends-light-tasks-too",
        ),
        pytest.param(
            {
                "celery": {"enabled": True, "heavyQueue": "big", "worker": {"queues": ["light"]}},
                "keda": True,
            },
            "big",
            id="renamed-heavy-queue",
        ),
    ],
)
def test_a_queue_tasks_route_to_that_no_pool_consumes_is_refused(
    values: dict[str, Any], queue: str
) -> None:
    keda = values.pop("keda", False)
    message = render_error(values, api_versions=(KEDA_API,) if keda else ())
    assert f'queue "{queue}" is consumed by no worker pool' in message


def test_the_hybrid_executor_needs_no_pool_for_a_queue_it_runs_in_process() -> None:
    """Without scale-from-zero, the hybrid executor runs a task in-process while no live worker
    consumes its queue: light always, heavy when no pool scales from zero."""
    light_only = _with_pools({"name": "h", "queues": ["heavy"]}, enabled=False)
    assert find(
        render_chart(light_only, api_versions=(KEDA_API,)), "Deployment", "tl-tasklane-worker-h"
    )
    no_heavy = _with_pools({"name": "l", "queues": ["light"]}, enabled=False)
    assert find(render_chart(no_heavy), "Deployment", "tl-tasklane-worker-l")


def test_scaled_mode_without_any_pool_is_refused() -> None:
    message = render_error(_with_pools(enabled=False))
    assert "no worker pool" in message


def test_per_pool_settings_are_validated_with_the_pool_named() -> None:
    message = render_error(
        _with_pools({"name": "slow", "queues": ["heavy"], "terminationGracePeriodSeconds": 100})
    )
    assert "celery.workerPools[slow].terminationGracePeriodSeconds=100 is too short" in message


@pytest.mark.parametrize("name", ["Heavy", "-x", "a_b", "x" * 21])
def test_the_schema_refuses_pool_names_that_are_no_dns_label(name: str) -> None:
    message = render_error(_with_pools({"name": name, "queues": ["heavy"]}))
    assert "workerPools" in message


def test_scale_from_zero_flag_holds_only_when_every_pool_scales_from_zero() -> None:
    def flag(values: dict[str, Any]) -> str:
        config = get(
            render_chart(values, api_versions=(KEDA_API,)), "ConfigMap", "tl-tasklane-config"
        )
        return config["data"]["TASKLANE_SCALE_FROM_ZERO"]

    assert flag(render_values_file(POOLS_FILE)) == "true"
    pinned = render_values_file(POOLS_FILE)
    pinned["celery"]["workerPools"][1]["autoscaling"] = {"keda": {"minReplicaCount": 1}}
    assert flag(pinned) == "false"


def render_values_file(path: Path) -> dict[str, Any]:
    """The values of a ci/ file, to change one field in a test."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_pool_workers_get_the_same_env_as_the_default_pool() -> None:
    manifests = render_chart({**render_values_file(POOLS_FILE)})
    heavy = env_map(container(get(manifests, "Deployment", HEAVY), "worker"))
    default = env_map(
        container(
            get(render_chart({"celery": {"enabled": True}}), "Deployment", "tl-tasklane-worker"),
            "worker",
        )
    )
    assert heavy == default


def test_notes_list_every_pool_and_how_to_scale_one() -> None:
    notes = render_notes(render_values_file(POOLS_FILE))
    assert "tl-tasklane-worker-heavy: heavy, 1, keda" in notes
    assert "tl-tasklane-worker-light: light, 8, keda" in notes
    assert "tasklane scale --release tl --pool NAME N" in notes
    assert "deploy/tl-tasklane-worker " not in notes  # no default pool to point at


@pytest.mark.parametrize(
    "pool",
    [
        {"name": "x", "queues": ["heavy"], "concurrency": 0},  # celery.worker's minimum, by $ref
        {"name": "x", "queues": []},
        {"name": "x", "queues": ["heavy"], "metricsPort": 9999},  # shared by every pool
        {"name": "x", "queues": ["heavy"], "autoscaling": {"keda": {"minReplicaCount": -1}}},
        {"queues": ["heavy"]},
    ],
)
def test_the_schema_checks_each_pool_field_by_celery_workers_rules(pool: dict[str, Any]) -> None:
    message = render_error(_with_pools(pool))
    assert "workerPools" in message


def test_a_pool_may_set_one_nested_field_alone() -> None:
    values = _with_pools(
        {"name": "x", "queues": ["heavy"], "autoscaling": {"keda": {"maxReplicaCount": 3}}}
    )
    scaled = get(
        render_chart(values, api_versions=(KEDA_API,)), "ScaledObject", "tl-tasklane-worker-x"
    )
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 3)


def test_network_policies_let_every_pool_reach_redis_and_be_scraped() -> None:
    values = {**render_values_file(POOLS_FILE), "networkPolicy": {"enabled": True}}
    manifests = render_chart(values)
    redis_from = get(manifests, "NetworkPolicy", "tl-tasklane-redis")["spec"]["ingress"][0]["from"]
    workers = get(manifests, "NetworkPolicy", "tl-tasklane-workers")["spec"]["podSelector"]
    for name in (HEAVY, LIGHT):
        labels = pod_labels(get(manifests, "Deployment", name))
        assert any(
            peer["podSelector"]["matchLabels"].items() <= labels.items()
            for peer in redis_from
            if "namespaceSelector" not in peer
        )
        assert workers["matchLabels"].items() <= labels.items()
        (expression,) = workers["matchExpressions"]
        assert labels[expression["key"]] in expression["values"]
