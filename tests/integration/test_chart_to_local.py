"""chart-to-local (DESIGN.md §6, issue 5): the chart's rendered containers, run here.

For single and scaled mode, `helm template` renders the chart; first its secrets hook Job runs,
as Helm runs it before install and upgrade, against tests.support.kube_api's stand-in API server
(a kubeconfig replaces the pod's service account): it creates the api token and the Redis
password there. Then every container's own command, args and env (resolved like the kubelet,
Secrets read from that stand-in, rewritten only as scripts/harness/chart_to_local.py lists)
start as local processes — in scaled mode the chart's own Redis container too, on Debian's
redis-server with the generated password — and then: the probes the chart declares pass, and a
task submitted over HTTP completes where the mode says (in the api in single mode, on the
Celery worker in scaled mode). With worker pools (ci/scaled-pools.yaml), each pool's rendered
worker container runs as its own process, and a task of each queue completes on the pool that
consumes it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.harness.chart_to_local import (
    Cluster,
    LocalContainer,
    LocalPods,
    find,
    finished_on,
    referenced_names,
    render,
    settings_env_names,
    submit_and_wait,
    wait_http,
)
from scripts.harness.processes import REPO_ROOT, clean_environment, wait_for_port
from tests.support.kube_api import FakeKubeApi

pytestmark = pytest.mark.integration

RELEASE = "tl"
NAMESPACE = "default"
FULLNAME = f"{RELEASE}-tasklane"
#: Read by something other than Settings, and by whom.
NON_SETTINGS_ENV = {
    "PROMETHEUS_MULTIPROC_DIR": "prometheus_client (multiprocess samples folder)",
}


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[LocalPods]:
    started = LocalPods(tmp_path)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def kube() -> Iterator[FakeKubeApi]:
    """The cluster's API server, for the Secrets the hook Job creates and the pods read."""
    with FakeKubeApi() as api:
        yield api


def local_cluster(objects: list[dict[str, Any]], kube: FakeKubeApi, tmp_path: Path) -> Cluster:
    return Cluster(
        objects,
        namespace=NAMESPACE,
        workdir=tmp_path,
        live_secrets=lambda name: kube.secret_data(name, NAMESPACE),
    )


def run_secrets_hook(cluster: Cluster, kube: FakeKubeApi, tmp_path: Path) -> None:
    """What Helm does before install and before every upgrade: run the rendered hook Job to
    completion. Its in-cluster configuration is a kubeconfig for the stand-in API server."""
    (job,) = find(cluster.objects, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = cluster.container("Job", job["metadata"]["name"], "secrets")
    kubeconfig = kube.write_kubeconfig(tmp_path, namespace=NAMESPACE)
    done = subprocess.run(
        container.argv,
        env={**clean_environment(), **container.env, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def assert_env_is_read(cluster: Cluster, container: LocalContainer, extra: set[str]) -> None:
    """Every variable the chart sets is read by the app, by prometheus_client, by KEDA, or is
    referenced as $(NAME) by another value, the command, or a probe."""
    (workload,) = [
        obj
        for kind in ("Deployment", "StatefulSet")
        for obj in find(cluster.objects, kind, container.workload)
    ]
    (spec,) = [
        c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == container.name
    ]
    referenced: set[str] = set()
    texts = [str(item.get("value", "")) for item in spec.get("env", [])]
    texts += [*spec.get("command", []), *spec.get("args", [])]
    for probe in container.probes.values():
        texts += probe.get("exec", {}).get("command", [])
    for text in texts:
        referenced |= referenced_names(text)
    known = settings_env_names() | set(NON_SETTINGS_ENV) | referenced | extra
    unread = [name for name in container.declared_env if name not in known]
    assert not unread, (
        f"{container.workload}/{container.name} sets variables nobody reads: {unread}"
    )


def keda_env_names(cluster: Cluster) -> set[str]:
    """Variables KEDA reads from the scale target (addressFromEnv, passwordFromEnv, ...)."""
    names: set[str] = set()
    for scaled in find(cluster.objects, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            for key, value in trigger.get("metadata", {}).items():
                if key.endswith("FromEnv"):
                    names.add(value)
    return names


def check_http_probes(container: LocalContainer) -> None:
    for probe in container.probes.values():
        http = probe.get("httpGet")
        if http is None:
            continue
        port = http["port"]
        if isinstance(port, str):  # a named container port: the chart names one, "http"
            port = next(iter(container.ports))
        wait_http(f"http://127.0.0.1:{container.ports[port]}", http["path"])


def token_header(cluster: Cluster, container: LocalContainer) -> dict[str, str]:
    token = container.env.get("TASKLANE_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def start_chart_redis(cluster: Cluster, pods: LocalPods) -> LocalContainer:
    """The chart's own Redis container, on Debian's redis-server (its port rewritten), bound to
    its Service."""
    redis = cluster.container("StatefulSet", f"{FULLNAME}-redis", "redis")
    (redis_port,) = redis.ports.values()
    redis.argv += ["--port", str(redis_port), "--bind", "127.0.0.1"]
    pods.start(redis)
    wait_for_port(redis_port, timeout=15)
    cluster.bind_service(f"{FULLNAME}-redis", {6379: redis_port})
    return redis


def test_single_mode_api_runs_from_its_rendered_container(
    pods: LocalPods, kube: FakeKubeApi, tmp_path: Path
) -> None:
    objects = render({}, release=RELEASE, namespace=NAMESPACE, workdir=tmp_path)
    cluster = local_cluster(objects, kube, tmp_path)
    run_secrets_hook(cluster, kube, tmp_path)
    workloads = {obj["metadata"]["name"] for obj in find(objects, "Deployment")}
    assert workloads == {f"{FULLNAME}-api"}
    assert not find(objects, "StatefulSet")

    api = cluster.container("Deployment", f"{FULLNAME}-api", "api")
    assert_env_is_read(cluster, api, set())
    assert api.env.get("TASKLANE_EXECUTOR") == "background"
    process = pods.start(api)
    (port,) = api.ports.values()
    wait_for_port(port, timeout=30, process=process)
    check_http_probes(api)

    url = f"http://127.0.0.1:{port}"
    record = submit_and_wait(url, token_header(cluster, api), "calculate_all_ratings", [])
    assert record["status"] == "SUCCESS", record
    assert record["executor"] == "background"
    # Containers log JSON (TASKLANE_LOG_FORMAT=json): one line per transition.
    lines = [json.loads(line) for line in pods.log(api).splitlines() if line.startswith("{")]
    transitions = [
        (line.get("status"), line.get("executor"))
        for line in lines
        if line.get("task_id") == record["task_id"]
    ]
    assert ("SUCCESS", "background") in transitions, transitions


def test_scaled_mode_runs_redis_api_worker_and_beat_from_their_rendered_containers(
    pods: LocalPods, kube: FakeKubeApi, tmp_path: Path
) -> None:
    values = {
        "celery": {"enabled": True, "worker": {"autoscaling": {"keda": {"force": True}}}},
    }
    objects = render(values, release=RELEASE, namespace=NAMESPACE, workdir=tmp_path)
    cluster = local_cluster(objects, kube, tmp_path)
    run_secrets_hook(cluster, kube, tmp_path)
    password = kube.secret_data(f"{FULLNAME}-redis-auth", NAMESPACE)
    run_secrets_hook(cluster, kube, tmp_path)  # the next upgrade's run rotates nothing
    assert kube.secret_data(f"{FULLNAME}-redis-auth", NAMESPACE) == password
    keda_names = keda_env_names(cluster)

    redis = start_chart_redis(cluster, pods)
    assert_env_is_read(cluster, redis, {"REDISCLI_AUTH"})  # redis-cli (probes) reads it

    api = cluster.container("Deployment", f"{FULLNAME}-api", "api")
    worker = cluster.container("Deployment", f"{FULLNAME}-worker", "worker")
    beat = cluster.container("Deployment", f"{FULLNAME}-beat", "beat")
    for container in (api, worker, beat):
        assert_env_is_read(cluster, container, keda_names)
    assert api.env["TASKLANE_EXECUTOR"] == "hybrid"
    assert api.env["TASKLANE_STORE"] == "redis"
    # The generated password reached the URLs (and Redis requires it).
    assert "127.0.0.1" in api.env["REDIS_URL"]
    assert f"{FULLNAME}-redis" not in api.env["REDIS_URL"]

    pods.start(worker)
    pods.start(beat)
    api_process = pods.start(api)
    (api_port,) = api.ports.values()
    wait_for_port(api_port, timeout=30, process=api_process)
    check_http_probes(api)

    # The worker's exec probes, run as the kubelet would run them in its container.
    for kind in ("startupProbe", "livenessProbe"):
        argv = cluster.probe_argv(worker, kind)
        assert argv is not None, f"worker has no exec {kind}"
        pods.probe_until_passes(worker, argv)
    assert "readinessProbe" not in worker.probes  # DESIGN §6: workers have none

    url = f"http://127.0.0.1:{api_port}"
    record = submit_and_wait(url, token_header(cluster, api), "calculate_all_ratings", [])
    assert record["status"] == "SUCCESS", (record, pods.log(worker))
    assert record["executor"] == "celery"
    assert str(record["worker"]).startswith("celery@")

    # The worker pod's metrics endpoint on its (rewritten) container port counted it.
    finished = finished_on(worker)
    assert finished.get(("calculate_all_ratings", "celery", "SUCCESS")) == 1, finished
    # Beat runs its schedule from the rendered command (one instance: it is not -B).
    assert "beat: Starting" in pods.log(beat), pods.log(beat)


def test_each_worker_pool_runs_the_tasks_of_its_own_queue(
    pods: LocalPods, kube: FakeKubeApi, tmp_path: Path
) -> None:
    """ci/scaled-pools.yaml: pools heavy (queue heavy, concurrency 1) and light (queue light,
    concurrency 8), no default pool. Each pool's rendered worker container runs as its own
    process; a heavy task (calculate_all_ratings) completes on the heavy pool's process and a
    light one (send_notification, pinned to Celery: the hybrid executor would run it in the api)
    on the light pool's, as each process's own metrics endpoint shows."""
    values_file = REPO_ROOT / "charts" / "tasklane" / "ci" / "scaled-pools.yaml"
    values = yaml.safe_load(values_file.read_text(encoding="utf-8"))
    values["tasks"] = {"routes": {"send_notification": "celery"}}
    objects = render(values, release=RELEASE, namespace=NAMESPACE, workdir=tmp_path)
    cluster = local_cluster(objects, kube, tmp_path)
    run_secrets_hook(cluster, kube, tmp_path)
    start_chart_redis(cluster, pods)

    workers = {
        pool: cluster.container("Deployment", f"{FULLNAME}-worker-{pool}", "worker")
        for pool in ("heavy", "light")
    }
    assert not find(objects, "Deployment", f"{FULLNAME}-worker")  # the default pool is off
    api = cluster.container("Deployment", f"{FULLNAME}-api", "api")
    for container in (api, *workers.values()):
        assert_env_is_read(cluster, container, keda_env_names(cluster))
    processes = {pool: pods.start(worker) for pool, worker in workers.items()}
    api_process = pods.start(api)
    (api_port,) = api.ports.values()
    wait_for_port(api_port, timeout=30, process=api_process)

    url, headers = f"http://127.0.0.1:{api_port}", token_header(cluster, api)
    heavy = submit_and_wait(url, headers, "calculate_all_ratings", [])
    light = submit_and_wait(url, headers, "send_notification", ["ops@example.com", "hi"])
    for record in (heavy, light):
        assert record["status"] == "SUCCESS", (record, *map(pods.log, workers.values()))
        assert record["executor"] == "celery"
    for pool, process in processes.items():
        assert process.poll() is None, pods.log(workers[pool])

    on_heavy, on_light = finished_on(workers["heavy"]), finished_on(workers["light"])
    assert on_heavy.get(("calculate_all_ratings", "celery", "SUCCESS")) == 1, on_heavy
    assert ("send_notification", "celery", "SUCCESS") not in on_heavy, on_heavy
    assert on_light.get(("send_notification", "celery", "SUCCESS")) == 1, on_light
    assert ("calculate_all_ratings", "celery", "SUCCESS") not in on_light, on_light
