"""`tasklane secrets ensure` (app/ensure_secrets.py, app/core/kubernetes/generated_secrets.py):
what the chart's hook Job does before install and upgrade.

No cluster exists on these machines: tests.support.kube_api.FakeKubeApi stands in for the API
server (real HTTP; Secrets created with POST, changed with merge patches guarded by
resourceVersion), reached through a kubeconfig as from a laptop.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app import cli
from app.core.kubernetes.calls import EXIT_FORBIDDEN, EXIT_UNREACHABLE, EXIT_USAGE
from scripts.harness.processes import free_port
from tests.support.kube_api import SECRETS, FakeKubeApi, kubeconfig

NS = "prod"
KEEP = "helm.sh/resource-policy=keep"


@pytest.fixture
def kube() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        yield api


@pytest.fixture
def config_file(kube: FakeKubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("TASKLANE_NAMESPACE", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return str(kube.write_kubeconfig(tmp_path, namespace=NS))


def ensure(config_file: str, *args: str) -> int:
    return cli.main(["secrets", "ensure", *args, "--kubeconfig", config_file])


def writes(kube: FakeKubeApi) -> list[tuple[str, str]]:
    return [(method, path) for method, path, _ in kube.requests if method in ("POST", "PATCH")]


def test_creates_a_missing_secret_with_random_alphanumeric_values(
    kube: FakeKubeApi, config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = ensure(
        config_file,
        "--secret", "tl-api-token", "--key", "token:40",
        "--secret", "tl-redis-auth", "--key", "password:32",
        "--label", "app.kubernetes.io/part-of=tasklane", "--annotation", KEEP,
    )  # fmt: skip

    assert code == 0
    token = kube.secret_data("tl-api-token", NS)
    password = kube.secret_data("tl-redis-auth", NS)
    assert token is not None
    assert password is not None
    assert len(token["token"]) == 40
    assert token["token"].isalnum()
    assert len(password["password"]) == 32
    assert password["password"].isalnum()
    created = kube.get(SECRETS, "tl-api-token", NS)
    assert created is not None
    assert created["metadata"]["labels"] == {"app.kubernetes.io/part-of": "tasklane"}
    assert created["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    out = capsys.readouterr().out
    assert f"Secret tl-api-token (namespace {NS}): created with generated token." in out


def test_values_differ_between_secrets_and_runs(kube: FakeKubeApi, config_file: str) -> None:
    ensure(config_file, "--secret", "a", "--key", "k:32", "--secret", "b", "--key", "k:32")
    a, b = kube.secret_data("a", NS), kube.secret_data("b", NS)
    assert a is not None
    assert b is not None
    assert a["k"] != b["k"]


def test_adds_only_the_missing_key_and_never_changes_an_existing_value(
    kube: FakeKubeApi, config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kube.add_secret("tl-redis-auth", {"password": "users-own-password"}, namespace=NS)

    code = ensure(
        config_file, "--secret", "tl-redis-auth", "--key", "password:32", "--key", "extra:20"
    )

    assert code == 0
    data = kube.secret_data("tl-redis-auth", NS)
    assert data is not None
    assert data["password"] == "users-own-password"
    assert len(data["extra"]) == 20
    out = capsys.readouterr().out
    assert "added generated extra" in out
    assert "kept password as they were (never rotated)" in out


def test_a_second_run_changes_nothing(
    kube: FakeKubeApi, config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("--secret", "tl-api-token", "--key", "token:40", "--annotation", KEEP)
    assert ensure(config_file, *argv) == 0
    first = kube.get(SECRETS, "tl-api-token", NS)
    before = len(writes(kube))
    capsys.readouterr()

    assert ensure(config_file, *argv) == 0

    assert len(writes(kube)) == before  # no POST, no PATCH: only the read
    assert kube.get(SECRETS, "tl-api-token", NS) == first
    assert "has token; nothing changed." in capsys.readouterr().out


def test_an_existing_secret_gets_a_missing_annotation_but_keeps_its_own(
    kube: FakeKubeApi, config_file: str
) -> None:
    """An upgrade from a chart version that rendered the Secret: `keep` stops Helm deleting the
    Secret it no longer renders; an annotation the user set is never overwritten."""
    kube.add_secret("tl-api-token", {"token": "t" * 40}, namespace=NS, annotations={"mine": "yes"})

    assert ensure(config_file, "--secret", "tl-api-token", "--key", "token:40",
                  "--annotation", KEEP, "--annotation", "mine=no") == 0  # fmt: skip

    obj = kube.get(SECRETS, "tl-api-token", NS)
    assert obj is not None
    assert obj["metadata"]["annotations"] == {"mine": "yes", "helm.sh/resource-policy": "keep"}
    assert kube.secret_data("tl-api-token", NS) == {"token": "t" * 40}


def test_a_secret_changed_meanwhile_is_read_again_not_overwritten(
    kube: FakeKubeApi, config_file: str
) -> None:
    """The patch carries the resourceVersion it read: a concurrent writer's value survives."""
    kube.add_secret("s", {}, namespace=NS)
    kube.fail(409, path=f"/namespaces/{NS}/secrets/s", method="PATCH", times=1)

    assert ensure(config_file, "--secret", "s", "--key", "k:16") == 0

    patches = [p for m, p in writes(kube) if m == "PATCH"]
    assert len(patches) == 2
    data = kube.secret_data("s", NS)
    assert data is not None
    assert len(data["k"]) == 16


def test_forbidden_names_the_missing_permission(
    kube: FakeKubeApi, config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kube.fail(403, path="/secrets", method="POST", message="cannot create secrets")

    assert ensure(config_file, "--secret", "s", "--key", "k:16") == EXIT_FORBIDDEN
    assert "may not create secrets in namespace prod" in capsys.readouterr().err


def test_unreachable_api(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "refused"
    path.write_text(kubeconfig(f"http://127.0.0.1:{free_port()}"))

    assert ensure(str(path), "--secret", "s", "--key", "k:16") == EXIT_UNREACHABLE
    assert "cannot reach the Kubernetes API" in capsys.readouterr().err


def test_a_secret_without_keys_is_a_usage_error(
    config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ensure(config_file, "--secret", "s") == EXIT_USAGE
    assert "--secret s has no --key KEY:LENGTH after it" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--key", "k:16", "--secret", "s"],  # a key before any secret
        ["--secret", "s", "--key", "k"],  # no length
        ["--secret", "s", "--key", "k:8"],  # too short to be a secret
        ["--secret", "s", "--key", "k/x:16"],  # not a Secret key
        ["--secret", "Not_A_Name", "--key", "k:16"],
        ["--secret", "s", "--key", "k:16", "--label", "novalue"],
    ],
)
def test_argument_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["secrets", "ensure", *argv])

    assert exited.value.code == 2
