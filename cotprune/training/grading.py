"""Pull the final answer out of a response and grade it against a reference.

`extract_answer` looks, in this order, for the last `\\boxed{...}`, a GSM8K `#### X` line, the
last "The answer is X" (the marker `layout.ANSWER_PREFIX` puts before every trained answer), and
finally the last number in the text.

`is_correct` compares numbers numerically, after dropping what GSM8K answers carry around them
(thousands separators, `$`, `%`, unit words, a trailing period), so "1,000 dollars." equals
"1000". Anything else (LaTeX, MATH answers) goes through `math-verify` when it is installed, each
comparison under a time limit, and otherwise through a normalised string comparison.
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction

log = logging.getLogger("cotprune")

MATH_VERIFY_TIMEOUT_S = 5  # per comparison; math-verify enforces it with SIGALRM (main thread)
_ANSWER_IS = re.compile(r"the (?:final )?answer is[:\s]*", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+")
_LEADING_NUMBER = re.compile(
    r"^([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:/\d+)?|[-+]?\.\d+)(.*)$")
_SPECIAL_TOKEN = re.compile(r"<\|[^|>]*\|>|</s>|<eos>|<end_of_turn>")  # chat-template markers
_UNIT_TAIL = re.compile(r"^[\sA-Za-z%.]*$")  # what may follow a number: units, %, a period


# --- extraction ------------------------------------------------------------------------------

def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None if none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        rest = text[start + len("\\boxed"):].strip()  # `\boxed 5`
        return rest.split()[0] if rest else None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1:i].strip()
    return None  # unbalanced: no answer rather than a guess


def _after_answer_marker(text: str) -> str | None:
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    tail = text[matches[-1].end():].strip()
    line = tail.splitlines()[0].strip() if tail else ""
    return line.rstrip(".").strip() or None


def extract_answer(text: str | None) -> str | None:
    """The final answer stated in a response, or None when it states none."""
    if not text:
        return None
    text = _SPECIAL_TOKEN.sub("", text)
    boxed = last_boxed(text)
    if boxed:
        return boxed
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip().rstrip(".").strip() or None
    stated = _after_answer_marker(text)
    if stated:
        return stated
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


# --- comparison ------------------------------------------------------------------------------

def _strip_decorations(text: str) -> str:
    """Remove LaTeX wrappers and currency signs that do not change a number's value."""
    s = text.strip().replace("\u2212", "-")  # a typographic minus sign
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:mathrm|textbf|mbox)\{([^}]*)\}", r"\1", s)
    for token in ("\\$", "$", "\\%", "\\!", "\\,", "\\;", "\\ ", "€", "£"):
        s = s.replace(token, " " if token in ("\\ ",) else "")
    return s.strip()


def parse_number(text: str | None) -> Fraction | None:
    """The value of a number written GSM8K-style, or None if the text is not just a number.

    "1,234", "$1,234.00", "50%", "18 dollars", "7." and "3/4" parse; "x + 1" does not.
    """
    if text is None:
        return None
    s = _strip_decorations(text)
    s = s.replace("\\frac", "").strip()
    frac = re.fullmatch(r"([-+]?)\{(\d+)\}\{(\d+)\}", s)  # what `\frac{a}{b}` left behind
    if frac:
        sign = -1 if frac.group(1) == "-" else 1
        return None if frac.group(3) == "0" else sign * Fraction(int(frac.group(2)),
                                                                  int(frac.group(3)))
    match = _LEADING_NUMBER.match(s)
    if not match or not _UNIT_TAIL.match(match.group(2)):
        return None
    number = match.group(1).replace(",", "").rstrip(".")
    try:
        if "/" in number:
            num, den = number.split("/")
            return None if int(den) == 0 else Fraction(Fraction(num), int(den))
        return Fraction(number)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(a: Fraction, b: Fraction, rel_tol: float = 1e-6) -> bool:
    """Exact for integers and fractions; a small relative tolerance for decimals."""
    if a == b:
        return True
    return abs(float(a) - float(b)) <= rel_tol * max(1.0, abs(float(b)))


def normalise_text(text: str) -> str:
    """String form for the last-resort comparison: case, spaces and LaTeX noise removed."""
    s = _strip_decorations(text).lower()
    s = s.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac")
    s = s.replace("\\tfrac", "\\frac")
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".")


def _math_verify():
    try:
        import math_verify
    except ImportError:
        return None
    return math_verify


def math_verify_equal(prediction: str, reference: str) -> bool | None:
    """math-verify's judgement, or None when it is not installed or cannot parse either side.

    Its time limit works through SIGALRM, which Python allows only in the main thread; in other
    threads the comparison runs without one.
    """
    mv = _math_verify()
    if mv is None:
        return None
    limit = MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() \
        else None

    def parse(s: str):
        wrapped = s if ("$" in s or "\\boxed" in s) else f"${s}$"
        return mv.parse(wrapped, parsing_timeout=limit)

    try:
        gold, pred = parse(reference), parse(prediction)
        if not gold or not pred:
            return None
        return bool(mv.verify(gold, pred, timeout_seconds=limit))
    except Exception as e:  # a timeout or a parser crash is "not verified", never a crash
        log.debug("math-verify failed on %r vs %r: %s", prediction, reference, e)
        return False


def is_correct(prediction: str | None, reference: str | None) -> bool:
    """Whether `prediction` states the same answer as `reference`."""
    if prediction is None or reference is None or not str(prediction).strip():
        return False
    prediction, reference = str(prediction), str(reference)
    pred_num, ref_num = parse_number(prediction), parse_number(reference)
    if pred_num is not None and ref_num is not None:
        return numbers_equal(pred_num, ref_num)
    if normalise_text(prediction) == normalise_text(reference):
        return True
    verdict = math_verify_equal(prediction, reference)
    return bool(verdict)
