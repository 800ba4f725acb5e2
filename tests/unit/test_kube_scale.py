"""`tasklane scale` (app/scale.py, app/core/kubernetes/scaling.py): every path and exit status.

No cluster exists on these machines: tests.support.kube_api.FakeKubeApi stands in for the
Kubernetes API server (real HTTP on 127.0.0.1, Deployment + scale subresource + KEDA
ScaledObjects in memory, 403/404/500 on demand), and the command reaches it through a kubeconfig
file (--kubeconfig), as it would reach a cluster from a laptop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import cli
from app.core.kubernetes.scaling import (
    COMPONENT_LABEL,
    EXIT_API_ERROR,
    EXIT_FORBIDDEN,
    EXIT_NOT_FOUND,
    EXIT_NOTHING_TO_RESUME,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    INSTANCE_LABEL,
    POOL_LABEL,
    release_worker_selector,
)
from app.core.kubernetes.state import PAUSED, PAUSED_REPLICAS
from scripts.harness.processes import free_port
from tests.chart.helpers import CI_VALUES_DIR, SCALED, render_chart
from tests.support.kube_api import DEPLOYMENTS, SCALED_OBJECTS, BlackHole, FakeKubeApi, kubeconfig

NS = "prod"
DEP = "demo-tasklane-worker"
#: What the chart puts on release demo's worker Deployment (tests/chart proves the labels).
DEMO_WORKER_LABELS = {INSTANCE_LABEL: "demo", COMPONENT_LABEL: "worker"}


@pytest.fixture
def kube() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        api.add_deployment(DEP, replicas=2, namespace=NS, labels=DEMO_WORKER_LABELS)
        yield api


@pytest.fixture
def config_file(kube: FakeKubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kubeconfig whose context namespace is `prod`; no TASKLANE_ variable leaks in."""
    for name in (
        "TASKLANE_WORKER_DEPLOYMENT",
        "TASKLANE_WORKER_SELECTOR",
        "TASKLANE_NAMESPACE",
        "TASKLANE_SCALED_OBJECT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return str(kube.write_kubeconfig(tmp_path, namespace=NS))


def scale(*args: str) -> int:
    return cli.main(["scale", *args])


def annotations(kube: FakeKubeApi, name: str = DEP) -> dict[str, str]:
    obj = kube.get(SCALED_OBJECTS, name, NS)
    assert obj is not None
    return obj["metadata"].get("annotations") or {}


def replicas(kube: FakeKubeApi) -> int:
    obj = kube.get(DEPLOYMENTS, DEP, NS)
    assert obj is not None
    return int(obj["spec"]["replicas"])


def test_without_keda_the_deployment_scale_subresource_is_patched(
    kube: FakeKubeApi, config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert scale("--replicas", "0", "--release", "demo", "--kubeconfig", config_file) == 0

    assert replicas(kube) == 0
    patches = [(m, p) for m, p, _ in kube.requests if m == "PATCH"]
    assert patches == [("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/{DEP}/scale")]
    out = capsys.readouterr().out
    assert f"Deployment {DEP} (namespace {NS}): replicas 2 -> 0." in out
    assert "No KEDA ScaledObject targets it" in out


def test_with_keda_the_paused_replicas_annotation_holds_the_count(
    kube: FakeKubeApi, config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kube.add_scaled_object(DEP, min_replicas=0, max_replicas=10, namespace=NS)

    assert scale("--replicas", "0", "--deployment", DEP, "--kubeconfig", config_file) == 0

    assert annotations(kube) == {PAUSED_REPLICAS: "0"}
    assert replicas(kube) == 2  # KEDA applies the hold; the command does not fight it
    out = capsys.readouterr().out
    assert f"set {PAUSED_REPLICAS}=0" in out
    assert "KEDA now holds the Deployment at 0 replicas" in out
    assert "tasklane scale --resume" in out

    assert scale("--replicas", "3", "--deployment", DEP, "--kubeconfig", config_file) == 0
    assert annotations(kube) == {PAUSED_REPLICAS: "3"}
    assert "(was 0)" in capsys.readouterr().out


def test_resume_removes_both_pause_annotations(
    kube: FakeKubeApi, config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    paused = {PAUSED_REPLICAS: "0", PAUSED: "true", "keep": "me"}
    kube.add_scaled_object(DEP, min_replicas=1, max_replicas=5, annotations=paused, namespace=NS)

    assert scale("--resume", "--release", "demo", "--kubeconfig", config_file) == 0

    assert annotations(kube) == {"keep": "me"}
    out = capsys.readouterr().out
    assert f"removed {PAUSED_REPLICAS} (was 0) and {PAUSED}" in out
    assert "autoscales it again between 1 and 5 replicas" in out

    assert scale("--resume", "--release", "demo", "--kubeconfig", config_file) == 0
    assert "it was not paused; nothing changed" in capsys.readouterr().out


def test_a_scaled_object_named_otherwise_is_found_by_its_target(
    kube: FakeKubeApi, config_file: str
) -> None:
    kube.add_scaled_object("someone-elses", target="other-deployment", namespace=NS)
    kube.add_scaled_object("custom-keda-name", target=DEP, namespace=NS)

    assert scale("--replicas", "1", "--release", "demo", "--kubeconfig", config_file) == 0

    assert annotations(kube, "custom-keda-name") == {PAUSED_REPLICAS: "1"}
    assert annotations(kube, "someone-elses") == {}


def test_resume_without_a_scaled_object_is_an_error(
    kube: FakeKubeApi, config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kube.add_scaled_object("someone-elses", target="other-deployment", namespace=NS)

    code = scale("--resume", "--release", "demo", "--kubeconfig", config_file)

    assert code == EXIT_NOTHING_TO_RESUME == 6
    err = capsys.readouterr().err
    assert f"--resume: no KEDA ScaledObject targets Deployment {DEP} in namespace {NS}" in err
    assert "--replicas N" in err
    assert not [m for m, *_ in kube.requests if m == "PATCH"]


def test_keda_not_installed_scales_the_deployment(kube: FakeKubeApi, config_file: str) -> None:
    kube.keda_installed = False

    assert scale("--replicas", "4", "--release", "demo", "--kubeconfig", config_file) == 0

    assert replicas(kube) == 4
    code = scale("--resume", "--release", "demo", "--kubeconfig", config_file)
    assert code == EXIT_NOTHING_TO_RESUME


def test_missing_release_is_not_found(
    kube: FakeKubeApi, config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = scale("--replicas", "1", "--release", "nope", "--kubeconfig", config_file)

    assert code == EXIT_NOT_FOUND == 3
    err = capsys.readouterr().err
    assert f"no worker Deployment of release nope in namespace {NS}" in err
    assert f"labelled {INSTANCE_LABEL}=nope,{COMPONENT_LABEL}=worker" in err
    assert "check the release name" in err


def test_a_missing_deployment_is_not_found(
    kube: FakeKubeApi, config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = scale("--replicas", "1", "--deployment", "gone", "--kubeconfig", config_file)

    assert code == EXIT_NOT_FOUND
    assert f"Deployment gone not found in namespace {NS}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("release", "values"),
    [
        ("demo", {"fullnameOverride": "jobs"}),
        ("r" * 53, {}),  # Helm's longest release name: the fullname is cut to 48 characters
    ],
    ids=["fullnameOverride", "long-release-name"],
)
def test_release_finds_the_charts_worker_deployment_by_its_labels(
    kube: FakeKubeApi, config_file: str, release: str, values: dict[str, object]
) -> None:
    """Whatever name the chart gave the worker Deployment, --release finds it: the labels come
    from the chart's own render, so chart and command cannot drift apart."""
    rendered = render_chart({**SCALED, **values}, name=release)
    worker = next(
        m
        for m in rendered
        if m["kind"] == "Deployment" and m["metadata"]["name"].endswith("worker")
    )
    name = worker["metadata"]["name"]
    assert name != f"{release}-tasklane-worker"  # a guessed name would miss it
    kube.add_deployment(name, replicas=1, namespace=NS, labels=worker["metadata"]["labels"])
    # Another release's workers and this release's api are never picked.
    kube.add_deployment("other", namespace=NS, labels={**DEMO_WORKER_LABELS, INSTANCE_LABEL: "x"})
    kube.add_deployment(
        "api", namespace=NS, labels={INSTANCE_LABEL: release, COMPONENT_LABEL: "api"}
    )
    kube.delete(DEPLOYMENTS, DEP, NS)

    assert scale("--replicas", "3", "--release", release, "--kubeconfig", config_file) == 0

    obj = kube.get(DEPLOYMENTS, name, NS)
    assert obj is not None
    assert obj["spec"]["replicas"] == 3


def test_several_worker_deployments_of_a_release_need_deployment(
    kube: FakeKubeApi, config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kube.add_deployment("demo-heavy", namespace=NS, labels=DEMO_WORKER_LABELS)

    code = scale("--replicas", "1", "--release", "demo", "--kubeconfig", config_file)

    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"(demo-heavy, {DEP}): name one with --deployment" in err
    assert not [m for m, *_ in kube.requests if m == "PATCH"]


@pytest.fixture
def pools(kube: FakeKubeApi) -> dict[str, str]:
    """Release demo's two pools (heavy, light) as the chart renders them (ci/scaled-pools.yaml),
    with their labels, plus the default pool's Deployment of another release: pool -> name."""
    kube.delete(DEPLOYMENTS, DEP, NS)
    rendered = render_chart(values_files=(CI_VALUES_DIR / "scaled-pools.yaml",), name="demo")
    names = {}
    for worker in rendered:
        labels = worker["metadata"]["labels"]
        if worker["kind"] == "Deployment" and labels[COMPONENT_LABEL] == "worker":
            kube.add_deployment(worker["metadata"]["name"], replicas=1, namespace=NS, labels=labels)
            names[labels[POOL_LABEL]] = worker["metadata"]["name"]
    other = {**DEMO_WORKER_LABELS, INSTANCE_LABEL: "other", POOL_LABEL: "heavy"}
    kube.add_deployment("other-tasklane-worker-heavy", namespace=NS, labels=other)
    return names


def test_pool_picks_that_pools_deployment_by_the_charts_labels(
    kube: FakeKubeApi, config_file: str, pools: dict[str, str]
) -> None:
    assert pools == {"heavy": "demo-tasklane-worker-heavy", "light": "demo-tasklane-worker-light"}
    code = scale(
        "--replicas", "3", "--release", "demo", "--pool", "light", "--kubeconfig", config_file
    )

    assert code == 0
    assert kube.get(DEPLOYMENTS, pools["light"], NS)["spec"]["replicas"] == 3
    assert kube.get(DEPLOYMENTS, pools["heavy"], NS)["spec"]["replicas"] == 1
    assert kube.get(DEPLOYMENTS, "other-tasklane-worker-heavy", NS)["spec"]["replicas"] == 1


def test_a_release_with_several_pools_needs_pool(
    kube: FakeKubeApi, config_file: str, pools: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = scale("--replicas", "1", "--release", "demo", "--kubeconfig", config_file)

    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"({pools['heavy']}, {pools['light']}): name one with --pool (heavy, light)" in err
    assert not [m for m, *_ in kube.requests if m == "PATCH"]


def test_pool_without_release_needs_it_when_two_releases_have_that_pool(
    kube: FakeKubeApi, config_file: str, pools: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = scale("--replicas", "2", "--pool", "heavy", "--kubeconfig", config_file)
    assert code == EXIT_USAGE
    assert "name the release with --release" in capsys.readouterr().err

    assert scale("--replicas", "2", "--pool", "light", "--kubeconfig", config_file) == 0
    assert kube.get(DEPLOYMENTS, pools["light"], NS)["spec"]["replicas"] == 2


def test_the_settings_selector_finds_the_pools_as_the_chart_sets_it(
    kube: FakeKubeApi,
    config_file: str,
    pools: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """TASKLANE_WORKER_SELECTOR (the api's env in the chart) scopes to the release: --pool alone
    picks one pool of it, though another release has a pool of that name too."""
    monkeypatch.setenv("TASKLANE_WORKER_SELECTOR", release_worker_selector("demo"))
    monkeypatch.setenv("TASKLANE_WORKER_DEPLOYMENT", "ignored-when-a-selector-is-set")

    assert scale("--replicas", "1", "--kubeconfig", config_file) == EXIT_USAGE
    assert "name one with --pool (heavy, light)" in capsys.readouterr().err
    assert scale("--replicas", "4", "--pool", "heavy", "--kubeconfig", config_file) == 0

    assert kube.get(DEPLOYMENTS, pools["heavy"], NS)["spec"]["replicas"] == 4
    assert kube.get(DEPLOYMENTS, "other-tasklane-worker-heavy", NS)["spec"]["replicas"] == 1


def test_an_unknown_pool_is_not_found(
    config_file: str, pools: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = scale(
        "--replicas", "1", "--release", "demo", "--pool", "gpu", "--kubeconfig", config_file
    )

    assert code == EXIT_NOT_FOUND
    assert "tasklane.io/pool=gpu" in capsys.readouterr().err


def test_wrong_namespace_is_not_found(kube: FakeKubeApi, config_file: str) -> None:
    code = scale(
        "--replicas", "1", "--release", "demo", "-n", "staging", "--kubeconfig", config_file
    )

    assert code == EXIT_NOT_FOUND


@pytest.mark.parametrize(
    ("path", "method", "keda", "denied"),
    [
        (f"/namespaces/{NS}/deployments", "GET", False, "may not list deployments"),
        (f"/deployments/{DEP}/scale", "PATCH", False, "may not patch deployments/scale"),
        (f"/deployments/{DEP}", "GET", False, "may not get deployments"),
        (f"/scaledobjects/{DEP}", "GET", True, "may not get scaledobjects"),
        (f"/scaledobjects/{DEP}", "PATCH", True, "may not patch scaledobjects"),
    ],
)
def test_rbac_denial_is_forbidden_with_the_missing_permission(
    kube: FakeKubeApi,
    config_file: str,
    capsys: pytest.CaptureFixture[str],
    path: str,
    method: str,
    keda: bool,
    denied: str,
) -> None:
    if keda:
        kube.add_scaled_object(DEP, namespace=NS)
    kube.fail(403, path=path, method=method, message='User "bob" cannot do that')

    code = scale("--replicas", "0", "--release", "demo", "--kubeconfig", config_file)

    assert code == EXIT_FORBIDDEN == 4
    err = capsys.readouterr().err
    assert denied in err
    assert f"in namespace {NS}" in err
    assert 'User "bob" cannot do that' in err
    assert replicas(kube) == 2


def test_other_api_errors_are_reported_with_the_servers_message(
    kube: FakeKubeApi, config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kube.fail(500, path="/scale", method="PATCH", message="etcdserver: request timed out")

    code = scale("--replicas", "0", "--release", "demo", "--kubeconfig", config_file)

    assert code == EXIT_API_ERROR == 1
    assert "HTTP 500 etcdserver: request timed out" in capsys.readouterr().err


def test_refused_connection_is_unreachable(
    tmp_path: Path, config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "refused"
    path.write_text(kubeconfig(f"http://127.0.0.1:{free_port()}"))

    code = scale("--replicas", "0", "--release", "demo", "--kubeconfig", str(path))

    assert code == EXIT_UNREACHABLE == 5
    err = capsys.readouterr().err
    assert "cannot reach the Kubernetes API at http://127.0.0.1:" in err
    assert "Connection refused" in err


def test_a_silent_api_server_times_out_as_unreachable(
    tmp_path: Path, config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with BlackHole() as hole:
        path = tmp_path / "silent"
        path.write_text(kubeconfig(hole.url))
        started = time.monotonic()

        code = scale(
            "--replicas", "0", "--release", "demo", "--kubeconfig", str(path), "--timeout", "0.5"
        )

    assert code == EXIT_UNREACHABLE
    assert time.monotonic() - started < 5
    assert "timed out" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--replicas", "1"], "name the worker Deployment"),
        (["--replicas", "1", "--release", "demo", "--kubeconfig", "/nonexistent"], "kubeconfig"),
        (["--replicas", "1", "--pool", "heavy", "--deployment", DEP], "without --pool"),
    ],
)
def test_usage_and_configuration_errors_exit_2(
    config_file: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert scale(*argv) == EXIT_USAGE == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--release", "demo"],  # neither --replicas nor --resume
        ["--replicas", "1", "--resume", "--release", "demo"],
        ["--replicas", "-1", "--release", "demo"],
        ["--replicas", "1", "--release", "demo", "--deployment", DEP],
    ],
)
def test_argument_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        scale(*argv)

    assert exited.value.code == 2


def test_settings_name_the_deployment_and_namespace(
    kube: FakeKubeApi,
    config_file: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kube.add_deployment("other-worker", replicas=1, namespace="team")
    monkeypatch.setenv("TASKLANE_WORKER_DEPLOYMENT", "other-worker")
    monkeypatch.setenv("TASKLANE_NAMESPACE", "team")

    assert scale("--replicas", "3", "--kubeconfig", config_file) == 0

    obj = kube.get(DEPLOYMENTS, "other-worker", "team")
    assert obj is not None
    assert obj["spec"]["replicas"] == 3
    assert "Deployment other-worker (namespace team): replicas 1 -> 3." in capsys.readouterr().out
