"""`tasklane` command line: thin wrappers that start the same processes the chart runs.

tasklane serve [--host 127.0.0.1] [--port 8000] [--workers 1] [--log-level info]
tasklane worker [--queues light,heavy] [--concurrency N] [--hostname NAME] [--loglevel info]
                [--pool prefork] [--metrics-port 9464]
tasklane beat [--schedule PATH] [--loglevel info]
tasklane status [--json] [--failures N]      (the deployment at a glance, from Redis)
tasklane status --worker [--hostname NAME]   (the worker pod's liveness probe)
tasklane scale --replicas N | --resume [--release R] [--pool NAME] | [--deployment NAME]
               [--namespace NS] [--kubeconfig PATH]
tasklane secrets ensure --secret NAME --key KEY:LENGTH [...] [--namespace NS]
                        (create missing Secrets/keys; the chart's hook Job runs it)

worker and beat exec `celery -A app.workers.celery_app worker|beat ...` (the guide's commands):
exec, not a child process, so Celery is PID 1 in a container and receives SIGTERM itself for
its warm shutdown. serve and worker prepare PROMETHEUS_MULTIPROC_DIR first (wiped, or created
when several processes will write and it is unset), so one endpoint per pod counts every
process (app/core/metrics_dir.py). `status --worker` is the worker pod's liveness probe.
The logic of `status` (report), `scale` and `secrets` lives in app/status.py, app/scale.py and
app/ensure_secrets.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from app import ensure_secrets as secrets_command
from app import scale as scale_command
from app.cli_types import integer
from app.config import Settings
from app.core.metrics_dir import ensure_multiprocess_dir_exists, use_multiprocess_dir

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
CELERY_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
POOLS = ("prefork", "threads", "solo")
#: Where `tasklane beat` keeps its schedule state by default (the root FS may be read-only).
DEFAULT_BEAT_SCHEDULE = str(Path(tempfile.gettempdir()) / "tasklane-celerybeat-schedule")
CELERY_APP = "app.workers.celery_app"

#: os.execvp's shape; tests pass a recorder instead.
ExecFunction = Callable[[str, Sequence[str]], NoReturn]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tasklane",
        description="One TaskManager API for FastAPI background work.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP API (uvicorn, app.main:create_app)",
        description="Run the HTTP API with uvicorn; settings come from TASKLANE_* variables.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    serve.add_argument(
        "--workers", type=_positive, default=1, help="uvicorn worker processes (default 1)"
    )
    _add_log_level(serve, "--log-level", LOG_LEVELS)  # uvicorn's spelling

    worker = commands.add_parser(
        "worker",
        help="run a Celery worker (exec celery -A app.workers.celery_app worker)",
        description="Run a Celery worker for the task queues; needs CELERY_BROKER_URL.",
    )
    worker.add_argument(
        "--queues",
        type=_queue_list,
        default=None,
        help="comma-separated queues to consume (default: the light and heavy queues)",
    )
    worker.add_argument(
        "--concurrency", type=_positive, default=None, help="pool processes (default: CPUs)"
    )
    worker.add_argument("--hostname", default=None, help="node name (default: celery@%%h)")
    worker.add_argument("--pool", choices=POOLS, default="prefork", help="(default prefork)")
    worker.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        help="port of the worker's /metrics (default: TASKLANE_WORKER_METRICS_PORT, else 9464; "
        "0 = off)",
    )
    _add_log_level(worker, "--loglevel", CELERY_LOG_LEVELS)

    beat = commands.add_parser(
        "beat",
        help="run Celery beat with the periodic schedule (exec celery ... beat)",
        description="Submit app.tasks.schedule.SCHEDULE to the queues; run exactly one.",
    )
    beat.add_argument(
        "--schedule",
        default=DEFAULT_BEAT_SCHEDULE,
        help=f"schedule state file in a writable directory (default {DEFAULT_BEAT_SCHEDULE})",
    )
    _add_log_level(beat, "--loglevel", CELERY_LOG_LEVELS)

    status = commands.add_parser(
        "status",
        help="report on the deployment (--worker: liveness of this host's Celery worker)",
        description="Without --worker: live workers, queues, each task's route now and recent "
        "failures, read from Redis (exit 2 when Redis is not configured or unreachable). "
        "--worker exits 0 while this host's worker heartbeat is fresh (or Redis "
        "cannot be read), 1 when it is stale or missing: the worker pod's liveness probe.",
    )
    status.add_argument(
        "--worker",
        action="store_true",
        help="judge this host's Celery worker by its heartbeat",
    )
    status.add_argument(
        "--hostname", default=None, help="worker node name (default: celery@<this host>)"
    )
    status.add_argument("--json", action="store_true", help="the report as JSON")
    status.add_argument(
        "--failures",
        type=_positive,
        default=10,
        help="how many recent FAILURE records to show (default 10)",
    )

    scale = commands.add_parser(
        "scale",
        help="set the worker pool's size (pauses KEDA when a ScaledObject owns it)",
        description="With a KEDA ScaledObject on the worker Deployment, set (--replicas) or "
        "remove (--resume) its autoscaling.keda.sh/paused-replicas annotation; without one, "
        "scale the Deployment. Exit: 0 done, 1 API error, 2 usage/configuration, 3 Deployment "
        "not found, 4 forbidden, 5 unreachable, 6 --resume without a ScaledObject.",
    )
    scale_command.add_arguments(scale)

    secrets = commands.add_parser(
        "secrets",
        help="create the Secrets a release needs, once (never rotates a value)",
        description="Secrets generated in the cluster instead of in rendered manifests.",
    )
    secrets_command.add_arguments(secrets)
    return parser


def _add_log_level(parser: argparse.ArgumentParser, flag: str, levels: Sequence[str]) -> None:
    parser.add_argument(
        flag,
        type=str.lower,
        choices=levels,
        default=None,
        help="log level (default: TASKLANE_LOG_LEVEL, else info)",
    )


def main(argv: list[str] | None = None, *, exec_function: ExecFunction = os.execvp) -> int:
    """Run the command argv names; returns the process exit status (worker and beat replace
    this process through exec_function and return only when they cannot start)."""
    args = build_parser().parse_args(argv)
    if args.command not in ("serve", "worker"):
        # beat and status never write samples, but the pod-wide variable may name a folder
        # that does not exist yet: prometheus_client refuses a missing folder at first write.
        ensure_multiprocess_dir_exists()
    if args.command == "serve":
        return serve(host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
    if args.command in ("worker", "beat"):
        return celery(args, exec_function)
    if args.command == "status":
        return status(args)
    if args.command == "scale":
        return scale_command.run(args)
    if args.command == "secrets":
        return secrets_command.run(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse refuses the rest


def serve(*, host: str, port: int, workers: int, log_level: str | None) -> int:
    """Run uvicorn with the app factory until it is stopped; 3 when the app could not start."""
    from app.logs import uvicorn_log_config

    if log_level is not None:
        # The factory reads Settings in each worker process; the environment reaches them all.
        os.environ["TASKLANE_LOG_LEVEL"] = log_level.upper()
    try:
        settings = Settings()
        settings.check()
    except ValueError as exc:
        print(f"tasklane serve: {exc}", file=sys.stderr)
        return 2
    if workers > 1 and settings.resolved_store == "memory":
        print(
            "tasklane serve: --workers > 1 needs a shared store (each worker would keep its own "
            "in-memory records); set REDIS_URL or TASKLANE_STORE=redis",
            file=sys.stderr,
        )
        return 2
    # Before uvicorn imports the app (and with it prometheus_client) in this or a child process.
    use_multiprocess_dir(required=workers > 1, prefix="tasklane-api-metrics-")
    level = (log_level or settings.log_level).lower()
    return run_uvicorn(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=level,
        log_config=uvicorn_log_config(settings.log_format, level),
    )


def run_uvicorn(app: str, *, workers: int, **options: Any) -> int:
    """uvicorn.run(app, ...), returning the exit status a start-up failure deserves.

    One process: uvicorn exits 3 itself when the app cannot start. Several: uvicorn.run stops
    the supervisor when a worker fails to start but returns normally (uvicorn 0.55), so the
    supervisor is run here, as uvicorn.run would, and its workers' exit codes are read after.
    """
    import uvicorn

    if workers == 1:
        uvicorn.run(app, workers=1, **options)
        return 0
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(app, workers=workers, **options)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    # Process.process is the multiprocessing child behind uvicorn's wrapper.
    failed = any(p.process.exitcode == STARTUP_FAILURE for p in supervisor.processes)
    return STARTUP_FAILURE if failed else 0


def celery(args: argparse.Namespace, exec_function: ExecFunction) -> int:
    """Replace this process with the Celery worker or beat that args describe."""
    try:
        settings = _celery_settings(args.command)
    except ValueError as exc:
        print(f"tasklane {args.command}: {exc}", file=sys.stderr)
        return 2
    loglevel = (args.loglevel or settings.log_level).upper()
    if args.command == "worker":
        if args.metrics_port is not None:
            os.environ["TASKLANE_WORKER_METRICS_PORT"] = str(args.metrics_port)
        # Pool children inherit it through exec and fork; the main process serves them all.
        use_multiprocess_dir(required=True, prefix="tasklane-worker-metrics-")
        command = worker_command(
            queues=args.queues or [settings.light_queue, settings.heavy_queue],
            concurrency=args.concurrency,
            hostname=args.hostname,
            loglevel=loglevel,
            pool=args.pool,
        )
    else:
        command = beat_command(schedule=args.schedule, loglevel=loglevel)
    try:
        exec_function(command[0], command)
    except OSError as exc:
        print(f"tasklane {args.command}: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 127
    return 0  # reached only when exec_function is a test's recorder


def status(args: argparse.Namespace) -> int:
    """`status --worker`: the liveness verdict; plain `status`: the report (app/status.py)."""
    if args.worker:
        if args.json:
            print("tasklane status: --json goes with the report, not --worker", file=sys.stderr)
            return 2
        return worker_status(args.hostname)
    if args.hostname is not None:
        print("tasklane status: --hostname goes with --worker", file=sys.stderr)
        return 2
    from app import status_render

    return status_render.run(as_json=args.json, failures=args.failures)


def worker_status(hostname: str | None) -> int:
    """The liveness verdict on this host's worker: 0 alive (or not judged), 1 dead."""
    from app.workers.liveness import check_worker

    try:
        settings = Settings()
    except ValueError as exc:
        print(f"tasklane status: {exc}", file=sys.stderr)
        return 2
    verdict = check_worker(settings, hostname)
    print(verdict.message, file=sys.stdout if verdict.alive else sys.stderr)
    return 0 if verdict.alive else 1


def celery_program() -> list[str]:
    """The `celery` console script of this environment (falls back to python -m celery)."""
    script = Path(sys.executable).with_name("celery")
    return [str(script)] if script.exists() else [sys.executable, "-m", "celery"]


def worker_command(
    *,
    queues: Sequence[str],
    concurrency: int | None,
    hostname: str | None,
    loglevel: str,
    pool: str,
) -> list[str]:
    """argv of the Celery worker that `tasklane worker` execs."""
    command = [*celery_program(), "-A", CELERY_APP, "worker", "--queues", ",".join(queues)]
    if concurrency is not None:
        command += ["--concurrency", str(concurrency)]
    if hostname is not None:
        command += ["--hostname", hostname]
    return [*command, "--pool", pool, "--loglevel", loglevel]


def beat_command(*, schedule: str, loglevel: str) -> list[str]:
    """argv of the Celery beat that `tasklane beat` execs."""
    return [
        *celery_program(),
        "-A",
        CELERY_APP,
        "beat",
        "--schedule",
        schedule,
        "--loglevel",
        loglevel,
    ]


def _celery_settings(role: str) -> Settings:
    """Settings for a worker or beat; ValueError naming the variable when they cannot work."""
    settings = Settings()
    if not settings.celery_broker_url:
        raise ValueError(
            "CELERY_BROKER_URL is not set (e.g. redis://redis:6379/0); "
            f"a Celery {role} needs the broker the api publishes to"
        )
    settings.check()
    return settings


def _queue_list(value: str) -> list[str]:
    queues = [item.strip() for item in value.split(",") if item.strip()]
    if not queues:
        raise argparse.ArgumentTypeError("name at least one queue")
    return queues


_port = integer(0, 65_535)
_positive = integer(1)


if __name__ == "__main__":
    sys.exit(main())
