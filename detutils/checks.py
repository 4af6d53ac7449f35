"""Checks for the exercises: a message that says what was expected, not a bare assert.

Every exercise of the course is followed by a check cell (nbgrader's autograder test
cell) built from these functions. A check compares the learner's answer with a value
from ``detutils`` or a hand-derived one, never with the solution's own output, and when
it fails it says which name is wrong, what was expected (value, shape, type) and gives
a hint:

    check_close("iou", iou, 9 / 51, hint="intersection 9, union 24 + 36 - 9")
    check_passed("Exercise 1")

A failed check raises ``CheckFailed``, an ``AssertionError``, so nbgrader's autograder
counts the cell as failed. Importing this module costs nothing beyond torch and numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckFailed",
    "check_close",
    "check_equal",
    "check_function",
    "check_passed",
    "check_true",
]


class CheckFailed(AssertionError):
    """An exercise's answer is not (yet) right; the message says what was expected."""


def _fail(message: str, hint: str) -> None:
    raise CheckFailed(f"{message}\nHint: {hint}" if hint else message)


def _require(name: str, value: Any, what: str, hint: str) -> None:
    if value is None:
        _fail(f"`{name}` is still None: assign {what} to it.", hint)


def _as_tensor(name: str, value: Any, hint: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64)
    if hasattr(value, "to_numpy"):  # pandas Series / DataFrame
        value = value.to_numpy()
    try:
        if isinstance(value, str | bytes | dict):  # NumPy would parse "0.5"
            raise TypeError
        return torch.tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        kind = type(value).__name__
        _fail(f"`{name}` should be a number or an array of numbers, got {kind}.", hint)
        raise  # unreachable: _fail raises


def _describe(expected: torch.Tensor) -> str:
    if expected.ndim == 0:
        return "a number"
    return f"a tensor of shape {tuple(expected.shape)}"


def check_close(
    name: str,
    value: Any,
    expected: Any,
    *,
    hint: str = "",
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> None:
    """``value`` equals ``expected`` within ``rtol`` and ``atol``, element by element.

    Numbers, lists, NumPy arrays, pandas objects and tensors are compared as float64;
    the shapes must agree (a one-element answer may be compared with a number).

    Raises:
        CheckFailed: ``value`` is None, not numeric, of another shape, or not close.
    """
    expected = _as_tensor("expected", expected, "")
    _require(name, value, _describe(expected), hint)
    got = _as_tensor(name, value, hint)
    if got.numel() == 1 and expected.numel() == 1:
        got, expected = got.reshape(()), expected.reshape(())
    if got.shape != expected.shape:
        _fail(
            f"`{name}` has shape {tuple(got.shape)}; expected shape {tuple(expected.shape)}.",
            hint,
        )
    if got.numel() == 0:
        return
    bad = ~torch.isclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)
    if not bad.any():
        return
    if got.ndim == 0:
        _fail(f"`{name}` is {got.item():.6g}; expected {expected.item():.6g}.", hint)
    index = tuple(int(i) for i in bad.nonzero()[0])
    _fail(
        f"`{name}` differs from the expected values at {int(bad.sum())} of {got.numel()} "
        f"positions; the first, at index {index}, is {got[index].item():.6g} where "
        f"{expected[index].item():.6g} was expected.",
        hint,
    )


def _exact(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return torch.as_tensor(np.asarray(value))


def _kind(expected: Any) -> str:
    if isinstance(expected, torch.Tensor | np.ndarray):
        return f"a tensor of shape {tuple(expected.shape)}"
    if isinstance(expected, bool):
        return "True or False"
    if isinstance(expected, int | np.integer):
        return "an integer"
    if isinstance(expected, float | np.floating):
        return "a number"
    if isinstance(expected, str):
        return "a string"
    if isinstance(expected, tuple | list):
        return f"a {type(expected).__name__} of {len(expected)} items"
    return f"a {type(expected).__name__}"


def check_equal(name: str, value: Any, expected: Any, *, hint: str = "") -> None:
    """``value == expected`` exactly (integers, strings, booleans, tuples, sets, ...).

    Tensors and arrays are compared element by element and must have the same shape.

    Raises:
        CheckFailed: ``value`` is None or differs from ``expected``.
    """
    _require(name, value, _kind(expected), hint)  # its type, never the expected value
    if isinstance(expected, torch.Tensor | np.ndarray):
        got, want = _exact(value), _exact(expected)
        if got.shape != want.shape:
            _fail(f"`{name}` has shape {tuple(got.shape)}; expected {tuple(want.shape)}.", hint)
        if not torch.equal(got.to(want.dtype), want):
            index = tuple(int(i) for i in (got.to(want.dtype) != want).nonzero()[0])
            _fail(
                f"`{name}` differs at index {index}: {got[index].item()!r} where "
                f"{want[index].item()!r} was expected.",
                hint,
            )
        return
    if value != expected:
        _fail(f"`{name}` is {value!r}; expected {expected!r}.", hint)


def check_true(condition: bool, message: str, *, hint: str = "") -> None:
    """A condition the answer must meet; ``message`` says what was expected.

    Raises:
        CheckFailed: ``condition`` is false.
    """
    if not condition:
        _fail(message, hint)


def check_function(
    name: str,
    function: Callable | None,
    cases: Sequence[tuple],
    reference: Callable,
    *,
    hint: str = "",
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> None:
    """``function(*case)`` equals ``reference(*case)`` for every case.

    Raises:
        CheckFailed: ``function`` is None or not callable, raises, or gives another value
            (the message names the first failing case).
    """
    _require(name, function, "your function", hint)
    if not callable(function):
        _fail(f"`{name}` should be a function, got {type(function).__name__}.", hint)
    for case in cases:
        shown = ", ".join(repr(argument) for argument in case)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        try:
            got = function(*case)
        except Exception as error:
            _fail(f"`{name}({shown})` raised {type(error).__name__}: {error}", hint)
        check_close(f"{name}({shown})", got, reference(*case), hint=hint, rtol=rtol, atol=atol)


def check_passed(what: str) -> None:
    """Print that the checks of a cell passed (the last line of a check cell)."""
    print(f"{what}: all checks passed.")
