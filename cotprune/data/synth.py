"""`cotprune synth arithmetic`: seeded multi-step word problems with exact integer answers.

The CoT is deliberately verbose (restatements, filler, redundant self-checks) so that pruning has
something to find and a 135M model on a CPU can learn the task. Every intermediate value is a
non-negative integer and the answer is exact.

`SynthOptions` sizes the task. The defaults are the original task (2-5 steps, operands up to 30);
`experiments/` uses a smaller one (2-3 steps, operands up to 9, no multiplication) that a 135M
student learns after one LoRA run, while the verbose reasoning that pruning is for stays.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cotprune.errors import InputError

OPERATIONS = ("add", "sub", "mul", "groups")

NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack",
         "Kira", "Leo", "Maya", "Noah", "Olive", "Pablo", "Rosa", "Sam", "Tara", "Umar"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "shells",
         "cards", "stamps"]
FILLER = [
    "Okay, let me think about this carefully.",
    "Hmm, so basically,",
    "Let me restate that to be sure.",
    "Alright, moving on.",
    "This part is straightforward.",
    "Let me write this down clearly.",
    "So, in other words,",
    "Right, that makes sense.",
]
# `--style brief`: the same filler and self-checks, in fewer words, so that exact greedy pruning
# of hundreds of chains fits a CPU (about 70 CoT tokens for 2-3 steps instead of 200-300).
BRIEF_FILLER = ["Okay.", "Hmm.", "Let me see.", "Alright.", "So,", "Right.", "Well,", "Now,"]
STYLES = ("verbose", "brief")


@dataclass(frozen=True)
class SynthOptions:
    """The size of `synth arithmetic` problems; validation names the offending flag."""

    min_steps: int = 2
    max_steps: int = 5
    max_start: int = 40
    max_operand: int = 30
    operations: tuple[str, ...] = OPERATIONS
    style: str = "verbose"

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise InputError(f"--style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if not 1 <= self.min_steps <= self.max_steps:
            raise InputError("--steps must be MIN-MAX with 1 <= MIN <= MAX")
        if self.max_start < 3:
            raise InputError("--max-start must be at least 3")
        if self.max_operand < 2:
            raise InputError("--max-operand must be at least 2")
        unknown = set(self.operations) - set(OPERATIONS)
        if unknown or not self.operations:
            raise InputError(f"--operations takes some of {','.join(OPERATIONS)}, "
                             f"got {','.join(self.operations) or 'none'}")
        if set(self.operations) == {"sub"}:
            raise InputError("--operations: 'sub' alone cannot continue from a value of 1")


def parse_steps(text: str) -> tuple[int, int]:
    """'2-3' -> (2, 3); '3' -> (3, 3)."""
    try:
        low, _, high = text.partition("-")
        return int(low), int(high or low)
    except ValueError:
        raise InputError(f"--steps must be N or MIN-MAX, got {text!r}") from None


def _step(rng: random.Random, name: str, item: str, value: int,
          opts: SynthOptions) -> tuple[str, str, str, int]:
    """One operation: (question sentence, verbose reasoning, brief reasoning, new value)."""
    kinds = [k for k in opts.operations if k != "sub" or value > 1]
    kind = rng.choice(kinds)
    if kind == "add":
        k = rng.randint(2, opts.max_operand)
        new = value + k
        return (f"Then {name} finds {k} more {item}.",
                f"{name} finds {k} more {item}, so we add: {value} + {k} = {new}. "
                f"Let me double-check: {new} - {k} = {value}, which matches.",
                f"{value} + {k} = {new}. Check: {new} - {k} = {value}.", new)
    if kind == "sub":
        k = rng.randint(1, value - 1)
        new = value - k
        return (f"Then {name} gives away {k} {item}.",
                f"{name} gives away {k} {item}, so we subtract: {value} - {k} = {new}. "
                f"Checking again: {new} + {k} = {value}. Yes.",
                f"{value} - {k} = {new}. Check: {new} + {k} = {value}.", new)
    if kind == "mul":
        k = rng.randint(2, 4)
        new = value * k
        word = {2: "doubles", 3: "triples", 4: "quadruples"}[k]
        return (f"Then {name}'s collection {word}.",
                f"The collection {word}, which means multiplying by {k}: {value} * {k} = {new}. "
                f"To verify, {new} / {k} = {value}. Correct.",
                f"{value} * {k} = {new}. Check: {new} / {k} = {value}.", new)
    packs, per = rng.randint(2, min(6, opts.max_operand)), rng.randint(2, min(9, opts.max_operand))
    new = value + packs * per
    return (f"Then {name} buys {packs} packs with {per} {item} in each pack.",
            f"{name} buys {packs} packs of {per}, that is {packs} * {per} = {packs * per} {item}. "
            f"Adding them: {value} + {packs * per} = {new}. "
            f"Let me re-check the multiplication: {packs} * {per} = {packs * per}. Good.",
            f"{packs} * {per} = {packs * per}, {value} + {packs * per} = {new}. "
            f"Check: {new} - {packs * per} = {value}.", new)


def arithmetic_problem(rng: random.Random, index: int, opts: SynthOptions = SynthOptions()
                       ) -> dict:
    """One chain with `opts.min_steps` to `opts.max_steps` steps."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(3, opts.max_start)
    history = [value]
    brief = opts.style == "brief"
    filler = BRIEF_FILLER if brief else FILLER
    sentences, reasoning = [f"{name} has {value} {item}."], []
    if brief:
        reasoning.append(f"{rng.choice(filler)} {name} starts with {value}.")
    else:
        reasoning.append(f"{rng.choice(filler)} We start with the problem: {name} has {value} "
                         f"{item} at the beginning. So the starting amount is {value}.")
    for s in range(1, rng.randint(opts.min_steps, opts.max_steps) + 1):
        sentence, why, why_brief, value = _step(rng, name, item, value, opts)
        history.append(value)
        sentences.append(sentence)
        if brief:
            reasoning.append(f"{rng.choice(filler)} {why_brief}")
        else:
            reasoning.append(f"Step {s}: {rng.choice(filler)} {why} So now {name} has {value} "
                             f"{item}.")
    sentences.append(f"How many {item} does {name} have now?")
    trail = " -> ".join(map(str, history))
    if brief:
        reasoning.append(f"Once more: {trail}. Yes.")
    else:
        reasoning.append(f"To summarize, after all the steps {name} has {value} {item}. Just to "
                         f"be sure, let me go over it once more: {trail}. Yes, that is right.")
    return {
        "id": f"arith-{index:05d}",
        "question": " ".join(sentences),
        "cot": "\n".join(reasoning),
        "answer": str(value),
        "reference": str(value),
    }


def synth_arithmetic(n: int, seed: int, opts: SynthOptions = SynthOptions()) -> list[dict]:
    """`n` problems; the same seed and options always give the same problems."""
    rng = random.Random(seed)
    return [arithmetic_problem(rng, i, opts) for i in range(n)]
