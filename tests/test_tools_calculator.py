"""The calculator tool: correct arithmetic, and refusal of everything outside its grammar."""

from __future__ import annotations

import math
import time

import pytest

from agentspark.tools import CalculatorError, ToolCall, ToolRegistry, calculator
from agentspark.tools.builtin.arithmetic import evaluate


@pytest.mark.parametrize(("expression", "expected"), [
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("7 / 2", 3.5),
    ("7 // 2", 3),
    ("-7 % 3", 2),
    ("2 ** 10", 1024),
    ("2 ** -2", 0.25),
    ("-2 ** 2", -4),
    ("+-+3", -3),
    ("1.5e3 + 0.5", 1500.5),
    ("sqrt(16) + abs(-2)", 6.0),
    ("round(2.567, 2)", 2.57),
    ("round(1234, -2)", 1200),
    ("min(4, 2, 8) + max(1, 9)", 11),
    ("log(8, 2)", 3.0),
    ("log(e) + exp(0)", 2.0),
    ("floor(2.7) + ceil(2.1)", 5),
    ("hypot(3, 4)", 5.0),
    ("2 ** 10000 % 1000", 376),
])
def test_arithmetic(expression: str, expected: float) -> None:
    value = evaluate(expression)
    assert value == pytest.approx(expected) and type(value) is type(expected)


def test_trigonometry_and_constants() -> None:
    assert evaluate("sin(pi / 2)") == pytest.approx(1.0)
    assert evaluate("cos(0) + tan(0)") == pytest.approx(1.0)
    assert evaluate("tau / 2") == pytest.approx(math.pi)


def test_tool_returns_text_and_reports_refusals_as_errors() -> None:
    assert calculator("6 * 7") == "42"
    results = ToolRegistry([calculator]).run_sync([
        ToolCall("1", "calculator", {"expression": "sqrt(2) ** 2"}),
        ToolCall("2", "calculator", {"expression": "__import__('os')"}),
        ToolCall("3", "calculator", {"expression": "1 / 0"}),
    ])
    assert results[0].status == "ok" and float(results[0].content) == pytest.approx(2.0)
    assert results[1].status == "error" and results[1].content.startswith("CalculatorError: function '__import__'")
    assert (results[2].status, results[2].content) == ("error", "ZeroDivisionError: division by zero")


@pytest.mark.parametrize(("expression", "message"), [
    ("().__class__", "Attribute"),
    ("(1).real", "Attribute"),
    ("x + 1", "unknown name 'x'"),
    ("os", "unknown name 'os'"),
    ("__import__('os').system('true')", "not allowed"),
    ("eval('1')", "function 'eval' is not allowed"),
    ("open('/etc/passwd')", "function 'open' is not allowed"),
    ("factorial(5)", "function 'factorial' is not allowed"),
    ("math.sqrt(4)", "function 'Attribute' is not allowed"),
    ("(lambda: 1)()", "function 'Lambda' is not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("[1, 2]", "List is not allowed"),
    ("[x for x in (1,)]", "ListComp is not allowed"),
    ("'a' * 3", "only numbers"),
    ("True + 1", "only numbers"),
    ("1j * 2", "only numbers"),
    ("1 < 2", "Compare is not allowed"),
    ("1 & 3", "operator BitAnd is not allowed"),
    ("1 << 3", "operator LShift is not allowed"),
    ("~1", "UnaryOp is not allowed"),
    ("sqrt(x=4)", "positional arguments only"),
    ("max(*[1, 2])", "positional arguments only"),
    ("x := 3", "not a valid expression"),
    ("1 +", "not a valid expression"),
    ("import os", "not a valid expression"),
    ("(-8) ** 0.5", "no real result"),
    ("10.0 ** 400", "too large for a floating-point"),
    ("1e308 * 10", "too large for a floating-point"),
    ("round(1, -5000)", "round() takes"),
    ("1 + " * 400 + "1", "longer than"),
    ("-" * 990 + "1", "nested too deeply"),
])
def test_refusals(expression: str, message: str) -> None:
    with pytest.raises(CalculatorError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        evaluate(expression)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("expression", [
    "9**9**9", "2 ** 100000", "10 ** 5000", "(10 ** 3000) * (10 ** 3000)", "(2 ** 10000) ** 10000",
    "2 ** -100000", "99999999 ** 9999",
])
def test_huge_powers_are_refused_quickly(expression: str) -> None:
    start = time.perf_counter()
    with pytest.raises(CalculatorError, match="too large"):
        evaluate(expression)
    assert time.perf_counter() - start < 0.5
