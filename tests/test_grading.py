"""The grader: answer extraction and numeric / LaTeX comparison."""

from __future__ import annotations

import pytest

from cotprune.training import grading
from cotprune.training.grading import extract_answer, is_correct, parse_number


@pytest.mark.parametrize("text, expected", [
    ("Step one... \nThe answer is 42<|im_end|>", "42"),
    ("so 3 + 4 = 7.\nThe answer is 7.", "7"),
    ("We get \\boxed{\\frac{1}{2}} in the end.", "\\frac{1}{2}"),
    ("first \\boxed{3} then \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
    ("2 apples plus 3 apples make 5 apples", "5"),
    ("The final answer is: 1,234", "1,234"),
    ("no numbers here", None),
    ("", None),
    ("unbalanced \\boxed{12", "12"),  # no boxed answer, falls back to the last number
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("prediction, reference", [
    ("1,000", "1000"),
    ("$1,000.00", "1000"),
    ("18 dollars", "18"),
    ("50%", "50"),
    ("7.", "7"),
    ("-3", "\u22123"),
    ("0.5", "\\frac{1}{2}"),
    ("\\boxed{\\frac{3}{4}}", "3/4"),
    ("\\text{(A)}", "(A)"),
])
def test_equal_answers(prediction, reference):
    assert is_correct(prediction, reference)


@pytest.mark.parametrize("prediction, reference", [
    ("6", "7"),
    ("1,001", "1000"),
    ("0.51", "\\frac{1}{2}"),
    (None, "7"),
    ("", "7"),
    ("   ", "7"),
    ("7 or 8", "7"),
    ("x+1", "x+2"),
])
def test_wrong_or_missing_answers(prediction, reference):
    assert not is_correct(prediction, reference)


def test_parse_number_rejects_expressions():
    assert parse_number("x + 1") is None
    assert parse_number("1,2") is None  # not a thousands separator
    assert parse_number("12 apples") == 12


def test_extract_then_grade_round_trip():
    response = "Let me think. 12 * 3 = 36, minus 1 is 35.\nThe answer is 35 cookies."
    assert is_correct(extract_answer(response), "35")
    assert not is_correct(extract_answer(response), "36")


def test_latex_without_math_verify_uses_normalised_strings(monkeypatch):
    monkeypatch.setattr(grading, "_math_verify", lambda: None)
    assert is_correct("\\dfrac{\\pi}{2}", "\\frac{\\pi}{2}")
    assert is_correct("\\left( 1, 2 \\right)", "(1,2)")
    assert not is_correct("\\frac{\\pi}{3}", "\\frac{\\pi}{2}")


def test_latex_through_math_verify():  # math-verify is a dev dependency, so this always runs
    assert is_correct("\\frac{\\sqrt{8}}{2}", "\\sqrt{2}")
    assert is_correct("\\boxed{x^2 + 2x + 1}", "(x+1)^2")
    assert not is_correct("\\sqrt{3}", "\\sqrt{2}")


def test_math_verify_failure_is_not_a_crash(monkeypatch):
    class Broken:
        @staticmethod
        def parse(*a, **k):
            raise RuntimeError("parser exploded")

    monkeypatch.setattr(grading, "_math_verify", lambda: Broken)
    assert not is_correct("\\weird{", "\\sqrt{2}")
