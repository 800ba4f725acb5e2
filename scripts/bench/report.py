"""The benchmark's output: one table on stdout and one JSON file with every sample."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.bench.common import Profile, Result

COLUMNS = ("benchmark", "baseline", "tasklane", "ratio", "target", "met")


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    digits = 0 if abs(value) >= 100 else 2 if abs(value) < 10 else 1
    return f"{value:,.{digits}f} {unit}"


def table(results: Sequence[Result], errors: Mapping[str, str]) -> str:
    """The results as a fixed-width table, then what each ratio means, then any failures."""
    rows = [
        (
            result.name,
            _number(result.baseline, result.unit),
            _number(result.tasklane, result.unit),
            f"{result.ratio:.2f}x",
            f"{result.target_text}" + (f" ({result.target})" if result.unit in ("s", "MB") else ""),
            "yes" if result.met else "NO",
        )
        for result in results
    ]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(COLUMNS), line(["-" * width for width in widths]), *map(line, rows), ""]
    out.append("ratio =")
    out.extend(f"  {result.name}: {result.ratio_means}" for result in results)
    missed = [result for result in results if not result.met and result.when_missed]
    if missed:
        out.append("")
        out.append("targets missed: why (from profiling) and what it would take")
        out.extend(f"  {result.name}: {result.when_missed}" for result in missed)
    if errors:
        out.append("")
        out.append("FAILED benchmarks (no result):")
        out.extend(f"  {name}: {message}" for name, message in errors.items())
    return "\n".join(out)


def write_json(
    path: Path,
    results: Sequence[Result],
    errors: Mapping[str, str],
    *,
    profile: Profile,
    selected: Sequence[str],
    seconds: float,
) -> None:
    """Every result with its per-round samples, plus what the numbers were measured on."""
    document: dict[str, Any] = {
        "meta": {
            "profile": "quick" if profile.quick else "full",
            "rounds": profile.rounds,
            "selected": list(selected),
            "seconds": round(seconds, 1),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()),
        },
        "complete": not errors,
        "results": [result.to_dict() for result in results],
        "errors": dict(errors),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
