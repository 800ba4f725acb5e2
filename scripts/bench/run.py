"""Entry point: `python -m scripts.bench [--quick] [--only a,c] [--out PATH] [--strict]`.

Runs the benchmarks in order (a) ... (f), each against services of its own, prints the table
and writes the JSON file. A benchmark that crashes is reported and the others still run; the
exit status is 1 when one crashed (or, with --strict, when a target was missed), else 0: a
missed target is a finding to read, not a broken run.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from scripts.bench import detection, e2e, http_submit, memory, submit
from scripts.bench.common import FULL, QUICK, Profile, Result, Workspace, log
from scripts.bench.report import table, write_json
from scripts.harness.processes import REPO_ROOT

#: Ignored by git already (.cache/ is in .gitignore).
DEFAULT_OUT = REPO_ROOT / ".cache" / "bench" / "results.json"

Benchmark = Callable[[Profile, Workspace], Awaitable[list[Result]]]

BENCHMARKS: dict[str, Benchmark] = {
    "a": lambda profile, _: submit.run(profile, ("a",)),
    "b": lambda profile, _: submit.run(profile, ("b",)),
    "c": e2e.run,
    "d": http_submit.run,
    "e": detection.run,
    "f": memory.run,
}
#: The rows each benchmark must produce (JSON keys); a missing one makes the run incomplete.
EXPECTED_KEYS: dict[str, tuple[str, ...]] = {
    "a": ("a_celery_submit",),
    "b": ("b_submit_many",),
    "c": ("c_e2e_worker",),
    "d": ("d_http_throughput", "d_http_p99"),
    "e": ("e_dead_pool_detection", "e_new_worker_detection"),
    "f": ("f_idle_rss_single", "f_idle_rss_scaled"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench",
        description="tasklane vs plain Celery / FastAPI, measured side by side in one run.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, one round (smoke test, < 60 s)"
    )
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help="comma-separated benchmarks to run, of a,b,c,d,e,f (default: all)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--logs",
        type=Path,
        default=None,
        help="folder for the started processes' logs (default: next to --out)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed too")
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    args.selected = selected
    return args


async def run_all(
    selected: list[str], profile: Profile, workspace: Workspace
) -> tuple[list[Result], dict[str, str]]:
    results: list[Result] = []
    errors: dict[str, str] = {}
    for name in selected:
        began = time.monotonic()
        try:
            rows = await BENCHMARKS[name](profile, workspace)
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"({name}) FAILED:\n{traceback.format_exc()}")
            continue
        results.extend(rows)
        missing = set(EXPECTED_KEYS[name]) - {row.key for row in rows}
        if missing:
            errors[name] = f"no result for {sorted(missing)}"
        log(f"({name}) done in {time.monotonic() - began:.1f} s")
    return results, errors


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = QUICK if args.quick else FULL
    workspace = Workspace(args.logs or args.out.parent / "logs")
    workspace.clear()
    began = time.monotonic()
    results, errors = asyncio.run(run_all(args.selected, profile, workspace))
    seconds = time.monotonic() - began
    print(table(results, errors))
    print(
        f"\n{len(results)} result(s) in {seconds:.0f} s ({'quick' if profile.quick else 'full'});"
        f" JSON: {args.out}; process logs: {workspace.logs}"
    )
    write_json(args.out, results, errors, profile=profile, selected=args.selected, seconds=seconds)
    if errors:
        return 1
    if args.strict and not all(result.met for result in results):
        return 1
    return 0
