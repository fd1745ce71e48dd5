"""Why a student's answers are wrong, for `synth arithmetic`: `errors.py EVAL.parquet ...`.

Each wrong answer falls in one of three kinds, read from the response's equations
(`a + b = c`, `a - b = c`):

- operand: an amount from the question appears as no equation's second operand, so the chain
  lost a step or copied its number wrong (a chain with no complete equation lands here too);
- slip: every amount is used, but some equation is false (`11 - 1 = 9`);
- other: every amount used and every equation true, and still the wrong answer (for example a
  subtraction where the question adds).
"""

from __future__ import annotations

import re
import sys
from collections import Counter

EQUATION = re.compile(r"(\d+)\s*([+-])\s*(\d+)\s*=\s*(\d+)")
AMOUNT = re.compile(r"Then \w+ (?:finds|gives away) (\d+)")


def error_kind(question: str, response: str) -> str:
    equations = EQUATION.findall(response)
    used = {int(b) for _, _, b, _ in equations}
    if any(int(k) not in used for k in AMOUNT.findall(question)):
        return "operand"
    if any((int(a) + int(b) if op == "+" else int(a) - int(b)) != int(c)
           for a, op, b, c in equations):
        return "slip"
    return "other"


def main(paths: list[str]) -> None:
    import pyarrow.parquet as pq

    for path in paths:
        rows = pq.read_table(path, columns=["question", "response", "correct"]).to_pylist()
        kinds = Counter(error_kind(r["question"], r["response"]) for r in rows if not r["correct"])
        print(f"{path}: {sum(kinds.values())} wrong of {len(rows)}; "
              + ", ".join(f"{k} {kinds[k]}" for k in ("operand", "slip", "other")))


if __name__ == "__main__":
    main(sys.argv[1:])
