"""`tasklane secrets ensure --secret NAME --key KEY:LENGTH [--key ...] [--secret NAME ...]
[--label K=V] [--annotation K=V] [--namespace NS] [--kubeconfig PATH] [--timeout S]`: create the
named Secrets if missing and add the keys they lack, with random alphanumeric values; a value
that exists is never changed (app/core/kubernetes/generated_secrets.py). The chart's hook Job
runs it before install and upgrade; it also serves anyone who applies the manifests otherwise.

Each --key belongs to the --secret before it. Labels and annotations go on created Secrets;
on existing ones only missing annotations are added. Namespace and configuration: the rule of
app/cli_kube.py, shared with `tasklane scale`.

Exit status (app/core/kubernetes/calls.py): 0 done, 1 other API error, 2 usage or no
configuration, 4 forbidden (RBAC), 5 API server unreachable.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from app.cli_kube import add_connection_arguments, connect
from app.cli_types import integer
from app.config import Settings

#: What Kubernetes accepts as a Secret data key.
_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
#: A DNS subdomain (a Secret's name).
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_length = integer(16, 4096)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `secrets` command and its `ensure` subcommand."""
    actions = parser.add_subparsers(dest="secrets_action", required=True, metavar="ACTION")
    ensure = actions.add_parser(
        "ensure",
        help="create missing Secrets / keys with random values; never change an existing one",
        description="Create each --secret if missing and add the --key entries it lacks (random "
        "alphanumeric values of the given length); existing values are never read out, changed "
        "or rotated. Exit: 0 done, 1 API error, 2 usage/configuration, 4 forbidden, "
        "5 unreachable.",
    )
    ensure.add_argument(
        "--secret",
        dest="secrets",
        action=_SecretAction,
        required=True,
        metavar="NAME",
        help="a Secret to ensure (repeatable; each followed by its --key options)",
    )
    ensure.add_argument(
        "--key",
        action=_KeyAction,
        metavar="KEY:LENGTH",
        help="a key of the preceding --secret and the length of its generated value (16-4096)",
    )
    ensure.add_argument(
        "--label", action="append", type=_pair, default=[], metavar="K=V",
        help="label for created Secrets (repeatable)",
    )  # fmt: skip
    ensure.add_argument(
        "--annotation", action="append", type=_pair, default=[], metavar="K=V",
        help="annotation added when missing, e.g. helm.sh/resource-policy=keep (repeatable)",
    )  # fmt: skip
    add_connection_arguments(ensure)


def run(args: argparse.Namespace) -> int:
    """Ensure every Secret args name; prints one line per Secret, returns the exit status."""
    from app.core.kubernetes.calls import EXIT_USAGE, ApiCallError
    from app.core.kubernetes.client import KubeConfigError
    from app.core.kubernetes.generated_secrets import SecretEnsurer, SecretSpec

    empty = [name for name, keys in args.secrets if not keys]
    if empty:
        return _fail(f"--secret {empty[0]} has no --key KEY:LENGTH after it", EXIT_USAGE)
    try:
        settings = Settings()
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        connection, namespace = connect(args, settings)
    except KubeConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    ensurer = SecretEnsurer(
        connection.api_client(),
        namespace=namespace,
        labels=dict(args.label),
        annotations=dict(args.annotation),
        request_timeout=args.timeout,
    )
    try:
        for name, keys in args.secrets:
            print(ensurer.ensure(SecretSpec(name=name, keys=keys)).line())
    except ApiCallError as exc:
        return _fail(str(exc), exc.exit_code)
    return 0


class _SecretAction(argparse.Action):
    """--secret NAME: starts a new (name, {key: length}) entry."""

    def __call__(self, parser: Any, namespace: Any, value: Any, option: Any = None) -> None:
        if not _NAME.match(value):
            parser.error(f"argument --secret: {value!r} is not a valid Secret name")
        entries = getattr(namespace, self.dest, None) or []
        entries.append((value, {}))
        setattr(namespace, self.dest, entries)


class _KeyAction(argparse.Action):
    """--key KEY:LENGTH: adds the key to the --secret given before it."""

    def __call__(self, parser: Any, namespace: Any, value: Any, option: Any = None) -> None:
        entries = getattr(namespace, "secrets", None)
        if not entries:
            parser.error("argument --key: must follow the --secret it belongs to")
        key, sep, length = value.rpartition(":")
        if not sep or not _KEY.match(key):
            parser.error(f"argument --key: {value!r} is not KEY:LENGTH (KEY of [-._a-zA-Z0-9])")
        try:
            entries[-1][1][key] = _length(length)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"argument --key {key}: length {exc}")


def _pair(value: str) -> tuple[str, str]:
    key, sep, text = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, not {value!r}")
    return key, text


def _fail(message: str, code: int) -> int:
    print(f"tasklane secrets ensure: {message}", file=sys.stderr)
    return code
