"""`tasklane` command line: thin wrappers that start the same processes the chart runs.

tasklane serve [--host 127.0.0.1] [--port 8000] [--workers 1] [--log-level info]
"""

from __future__ import annotations

import argparse
import os
import sys

from app.config import Settings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


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
    serve.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=None,
        help="log level (default: TASKLANE_LOG_LEVEL, else info)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command argv names; returns the process exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse refuses the rest


def serve(*, host: str, port: int, workers: int, log_level: str | None) -> int:
    """Run uvicorn with the app factory until it is stopped."""
    import uvicorn

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
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=(log_level or settings.log_level).lower(),
    )
    return 0


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65_535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, not {number}")
    return number


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


if __name__ == "__main__":
    sys.exit(main())
