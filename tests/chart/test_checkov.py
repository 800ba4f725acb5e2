"""checkov on what every ci/ values file renders: clean, with each skip justified in place
(charts/tasklane/.checkov.yaml for chart-wide decisions, checkov.io/skipN annotations for
single objects). checkov comes from `scripts/install-tools --checkov` (its own venv; `make
test` runs it), or TASKLANE_CHECKOV / PATH; a missing checkov fails, it never skips."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.chart.conftest import CI_VALUES_FILES
from tests.chart.helpers import CHART_DIR, run_helm

TOOLS = Path(
    os.environ.get("TASKLANE_TOOLS_DIR", CHART_DIR.parents[1] / ".cache" / "tools" / "bin")
)
CHECKOV = (
    os.environ.get("TASKLANE_CHECKOV")
    or (str(TOOLS / "checkov") if (TOOLS / "checkov").exists() else None)
    or shutil.which("checkov")
)


def test_rendered_chart_passes_checkov(tmp_path: Path) -> None:
    assert CHECKOV is not None, "checkov is missing: run scripts/install-tools --checkov"
    # A namespace other than "default", as a real install has (CKV_K8S_21 flags "default").
    for values_file in CI_VALUES_FILES:
        manifests = run_helm(
            "template",
            "tl",
            str(CHART_DIR),
            "--namespace",
            "tasklane",
            "--values",
            str(values_file),
        )
        (tmp_path / values_file.name).write_text(manifests, encoding="utf-8")
    result = subprocess.run(
        [CHECKOV, "--config-file", str(CHART_DIR / ".checkov.yaml"), "--directory", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Failed checks: 0" in result.stdout
