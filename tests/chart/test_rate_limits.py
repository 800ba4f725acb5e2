"""tasks.rateLimits: rendered into TASKLANE_RATE_LIMITS of the ConfigMap every api, worker and
beat container loads (envFrom), checked by the values schema, and absent by default."""

from __future__ import annotations

import pytest

from tests.chart.helpers import SCALED, get, render_chart, render_error

CONFIG = "tl-tasklane-config"


class TestRateLimits:
    def test_the_default_renders_no_variable(self) -> None:
        assert "TASKLANE_RATE_LIMITS" not in get(render_chart(SCALED), "ConfigMap", CONFIG)["data"]

    def test_limits_reach_the_config_every_container_loads(self) -> None:
        values = {**SCALED, "tasks": {"rateLimits": {"send_notification": "10/s", "sync": 100}}}
        manifests = render_chart(values)

        data = get(manifests, "ConfigMap", CONFIG)["data"]
        assert data["TASKLANE_RATE_LIMITS"] == "send_notification=10/s,sync=100"
        for deployment in ("tl-tasklane-api", "tl-tasklane-worker"):
            spec = get(manifests, "Deployment", deployment)["spec"]["template"]["spec"]
            sources = spec["containers"][0]["envFrom"]
            assert {"configMapRef": {"name": CONFIG}} in sources

    @pytest.mark.parametrize("bad", ["ten/s", "10/d", "fast", -1])
    def test_the_schema_refuses_a_limit_outside_celerys_syntax(self, bad: object) -> None:
        error = render_error({"tasks": {"rateLimits": {"send_notification": bad}}})

        assert "rateLimits" in error
