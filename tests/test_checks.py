"""The exercise checks: they pass on right answers and say what was expected otherwise."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from detutils.checks import (
    CheckFailed,
    check_close,
    check_equal,
    check_function,
    check_passed,
    check_true,
)


def test_close_accepts_numbers_lists_arrays_series_and_tensors():
    check_close("x", 9 / 51, torch.tensor([9 / 51]))  # one element against a number
    check_close("x", [[1.0, 2.0]], np.array([[1.0, 2.0 + 1e-7]]))
    check_close("x", pd.Series([0.5, 0.25]), torch.tensor([0.5, 0.25]))
    check_close("x", torch.tensor([math.nan]), [math.nan])  # NaN where NaN is expected
    check_close("x", torch.zeros(0, 4), torch.zeros(0, 4))


def test_close_says_none_shape_value_and_gives_the_hint():
    with pytest.raises(
        CheckFailed, match=r"`box` is still None: assign a tensor of shape \(1, 4\)"
    ):
        check_close("box", None, torch.zeros(1, 4), hint="corners")
    with pytest.raises(CheckFailed, match=r"`box` has shape \(1, 3\); expected shape \(1, 4\)"):
        check_close("box", [[1.0, 2.0, 3.0]], torch.zeros(1, 4))
    with pytest.raises(CheckFailed, match=r"`iou` is 0.2; expected 0.176471\.\nHint: union 51"):
        check_close("iou", 0.2, 9 / 51, hint="union 51")
    # a wrong element: which one, and how many are wrong
    with pytest.raises(
        CheckFailed, match=r"at 1 of 4 positions; the first, at index \(1, 0\), is 7"
    ):
        check_close("m", [[0.0, 1.0], [7.0, 3.0]], [[0.0, 1.0], [2.0, 3.0]])
    with pytest.raises(CheckFailed, match="should be a number or an array of numbers, got str"):
        check_close("x", "0.5", 0.5)
    assert issubclass(CheckFailed, AssertionError)  # nbgrader counts it as a failed test


def test_close_tolerance_is_relative_and_absolute():
    check_close("x", 1000.05, 1000.0)  # within rtol 1e-4
    with pytest.raises(CheckFailed):
        check_close("x", 1000.5, 1000.0)
    check_close("x", 1000.5, 1000.0, rtol=1e-3)


def test_equal_exact_values_and_tensors():
    check_equal("n", 8400, 8400)
    check_equal("t", (0, 3, 5, 1), (0, 3, 5, 1))
    check_equal("labels", torch.tensor([-1, 0, 2]), torch.tensor([-1, 0, 2]))
    with pytest.raises(CheckFailed, match=r"`n` is 8000; expected 8400\.\nHint: sum of H W"):
        check_equal("n", 8000, 8400, hint="sum of H W")
    with pytest.raises(
        CheckFailed, match=r"`labels` differs at index \(2,\): 1 where 2 was expected"
    ):
        check_equal("labels", torch.tensor([-1, 0, 1]), torch.tensor([-1, 0, 2]))
    with pytest.raises(CheckFailed, match=r"has shape \(2,\); expected \(3,\)"):
        check_equal("labels", np.array([1, 2]), torch.tensor([1, 2, 3]))
    with pytest.raises(CheckFailed, match="`n` is still None: assign an integer to it") as error:
        check_equal("n", None, 8400)
    assert "8400" not in str(error.value)  # the message never gives the answer away
    with pytest.raises(CheckFailed, match=r"assign a tuple of 4 items to it"):
        check_equal("cell", None, (0, 3, 5, 1))


def test_true_and_function():
    check_true(True, "never shown")
    with pytest.raises(CheckFailed, match="^the boxes must be sorted\nHint: argsort$"):
        check_true(False, "the boxes must be sorted", hint="argsort")
    check_function("double", lambda x: 2 * x, [(1.0,), (torch.ones(2),)], lambda x: x + x)
    with pytest.raises(CheckFailed, match=r"`double` is still None: assign your function"):
        check_function("double", None, [(1.0,)], lambda x: 2 * x)
    with pytest.raises(CheckFailed, match="should be a function, got int"):
        check_function("double", 3, [(1.0,)], lambda x: 2 * x)
    with pytest.raises(CheckFailed, match=r"`double\(2.0\)` is 3; expected 4"):
        check_function("double", lambda x: x + 1, [(1.0,), (2.0,)], lambda x: 2 * x)
    with pytest.raises(CheckFailed, match=r"`double\(1.0\)` raised ZeroDivisionError"):
        check_function("double", lambda x: x / 0 if x else x, [(1.0,)], lambda x: 2 * x)


def test_passed_prints_one_line(capsys):
    check_passed("Exercise 2")
    assert capsys.readouterr().out == "Exercise 2: all checks passed.\n"
