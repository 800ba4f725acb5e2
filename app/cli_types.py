"""argparse value types shared by `tasklane` and its sub-commands (app/cli.py, app/scale.py).

argparse reports a type function's ValueError as "invalid <function name> value", which names a
private helper ("invalid _port value: 'abc'"); these raise ArgumentTypeError with the accepted
range instead, so the message reads "argument --port: must be an integer from 0 to 65535, not
'abc'".
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse `type` accepting a decimal integer from low to high (no upper bound: None)."""
    bound = f"from {low} to {high}" if high is not None else f"of at least {low}"

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < low or (high is not None and number > high):
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, not {value!r}")
        return number

    return parse
