"""KEDA `scalingModifiers.formula`, parsed into a tree and evaluated over trigger values.

KEDA compiles the formula with expr-lang (github.com/expr-lang/expr) against an environment of
the ScaledObject's trigger names, each bound to that trigger's metric value as a float64, and
rejects a formula that names anything else. The chart only ever writes sums of trigger names, so
this accepts the arithmetic subset both languages share — numbers, trigger names, `+ - * /`,
unary `+ -` and parentheses — and refuses everything else (calls, `**`, comparisons, `??`,
attribute access) with an error instead of guessing. Python's own parser reads the text; the
tree is walked here and never handed to eval(), so a formula cannot run code.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


class FormulaError(ValueError):
    """The formula is outside the supported subset, names an unknown trigger, or divides by 0."""


@dataclass(frozen=True, slots=True)
class Formula:
    """A parsed formula: `evaluate({trigger name: value})` gives the composite metric."""

    text: str
    tree: ast.expr
    #: Trigger names the formula reads (a subset of the names it was parsed against).
    names: frozenset[str]

    def evaluate(self, values: Mapping[str, float]) -> float:
        """The formula's value; raises FormulaError when a referenced trigger has no value."""
        missing = self.names - values.keys()
        if missing:
            raise FormulaError(f"no value for trigger(s) {sorted(missing)} in {self.text!r}")
        return _evaluate(self.tree, values, self.text)


def parse_formula(text: str, trigger_names: Iterable[str]) -> Formula:
    """Parse `text`, allowing only the given trigger names as variables (as KEDA does)."""
    allowed = frozenset(trigger_names)
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise FormulaError(f"formula {text!r} does not parse: {exc.msg}") from None
    names: set[str] = set()
    _check(tree, allowed, names, text)
    return Formula(text=text, tree=tree, names=frozenset(names))


def _check(node: ast.expr, allowed: frozenset[str], names: set[str], text: str) -> None:
    if isinstance(node, ast.Constant):
        # bool is an int subclass; expr-lang would not add `true` to a number either.
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise FormulaError(f"{text!r}: only numbers are allowed as constants")
    elif isinstance(node, ast.Name):
        if node.id not in allowed:
            raise FormulaError(
                f"{text!r} names {node.id!r}, which is not a trigger (triggers: {sorted(allowed)})"
            )
        names.add(node.id)
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, allowed, names, text)
        _check(node.right, allowed, names, text)
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        _check(node.operand, allowed, names, text)
    else:
        raise FormulaError(
            f"{text!r}: {ast.unparse(node)!r} is not supported (numbers, trigger names, "
            "+ - * / and parentheses only)"
        )


def _evaluate(node: ast.expr, values: Mapping[str, float], text: str) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(values[node.id])
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, values, text))
    assert isinstance(node, ast.BinOp)  # _check admitted nothing else
    left = _evaluate(node.left, values, text)
    right = _evaluate(node.right, values, text)
    try:
        return _BINARY[type(node.op)](left, right)
    except ZeroDivisionError:
        raise FormulaError(f"{text!r} divides by zero with {dict(values)}") from None
