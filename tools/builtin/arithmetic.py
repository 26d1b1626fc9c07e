"""The ``calculator`` tool: arithmetic by walking the parsed expression, never ``eval``.

Only a closed grammar is evaluated: int/float literals, ``+ - * / // % **``, unary ``+``/``-``,
parentheses, a whitelist of math functions called with positional arguments, and a few
constants. Everything else (names, attributes, subscripts, lambdas, comprehensions, strings,
keyword arguments) is refused with ``CalculatorError``. Size guards keep ``9**9**9`` and its
relatives from hanging the process: exponents are capped and integer results bounded in bits.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from ..definition import tool
from ..errors import CalculatorError

MAX_EXPRESSION_CHARS = 1000
MAX_EXPONENT = 10_000
MAX_INT_BITS = 14_000  # about 4200 digits: under Python's 4300-digit int-to-str limit

Number = int | float


def _round(value: Number, ndigits: int | None = None) -> Number:
    # int.__round__ computes 10**-ndigits, so round(1, -10**9) would hang: cap ndigits.
    if ndigits is not None and (not isinstance(ndigits, int) or abs(ndigits) > 1000):
        raise CalculatorError("round() takes a whole number of digits between -1000 and 1000")
    return round(value, ndigits)

FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt, "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin,
    "acos": math.acos, "atan": math.atan, "atan2": math.atan2, "sinh": math.sinh, "cosh": math.cosh,
    "tanh": math.tanh, "log": math.log, "log10": math.log10, "log2": math.log2, "exp": math.exp,
    "abs": abs, "round": _round, "min": min, "max": max, "floor": math.floor, "ceil": math.ceil,
    "hypot": math.hypot, "degrees": math.degrees, "radians": math.radians,
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Number]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Number]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _checked(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError(f"result is too large (more than {MAX_INT_BITS} bits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is too large for a floating-point number")
    return value


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent!r} is too large (the limit is {MAX_EXPONENT})")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        # |base|**exponent needs about exponent * log2|base| bits; refuse before computing it.
        if exponent * (abs(base).bit_length() - 1) > MAX_INT_BITS:
            raise CalculatorError(f"result is too large (more than {MAX_INT_BITS} bits)")
    result = base ** exponent
    if isinstance(result, complex):
        raise CalculatorError("a negative number to a fractional power has no real result")
    return result


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(left, right))
        if type(node.op) not in _BINARY:
            raise CalculatorError(f"operator {type(node.op).__name__} is not allowed; use + - * / // % **")
        return _checked(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise CalculatorError(f"unknown name {node.id!r}; constants are {', '.join(sorted(CONSTANTS))}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            shown = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__
            raise CalculatorError(f"function {shown!r} is not allowed; functions are "
                                  f"{', '.join(sorted(FUNCTIONS))}")
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise CalculatorError("functions take plain positional arguments only")
        return _checked(FUNCTIONS[node.func.id](*(_eval(arg) for arg in node.args)))
    raise CalculatorError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def evaluate(expression: str) -> Number:
    """The value of an arithmetic ``expression``; ``CalculatorError`` for anything outside the grammar."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        return _eval(ast.parse(expression.strip(), mode="eval"))
    except SyntaxError as exc:
        raise CalculatorError(f"not a valid expression: {exc.msg}") from None
    except (RecursionError, MemoryError):  # the parser's or ours, on absurd nesting
        raise CalculatorError("expression is nested too deeply") from None
    except OverflowError:
        raise CalculatorError("result is too large for a floating-point number") from None


@tool(name="calculator", timeout=5.0)
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression and return the result. Supports numbers, + - * / // % **
    (exponent at most 10000), parentheses, the functions sqrt, sin, cos, tan, asin, acos, atan,
    atan2, sinh, cosh, tanh, log (natural, or log(x, base)), log10, log2, exp, abs, round, min, max,
    floor, ceil, hypot, degrees, radians, and the constants pi, e, tau. Angles are in radians.

    Args:
        expression: The expression, for example "sqrt(2) * (3 + 4) ** 2".
    """
    return repr(evaluate(expression))
