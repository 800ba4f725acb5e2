"""Fixtures of the chart tests: the ci/ values files, rendered once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.helpers import CI_VALUES_DIR, Manifest, render_chart

#: Every values file `helm lint` / `helm template` must accept (DESIGN §7).
CI_VALUES_FILES = sorted(CI_VALUES_DIR.glob("*.yaml"))


@pytest.fixture(params=CI_VALUES_FILES, ids=[path.stem for path in CI_VALUES_FILES])
def ci_values_file(request: pytest.FixtureRequest) -> Path:
    """Each file of charts/tasklane/ci/ in turn."""
    return request.param


@pytest.fixture
def ci_manifests(ci_values_file: Path) -> list[Manifest]:
    """What each ci/ values file renders (validated; cached across tests)."""
    return render_chart(values_files=[ci_values_file])
