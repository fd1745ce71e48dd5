"""`cotprune synth arithmetic`: seeded multi-step word problems with exact integer answers.

The CoT is deliberately verbose (restatements, filler, redundant self-checks) so that pruning has
something to find and a 135M model on a CPU can learn the task. Every intermediate value is a
non-negative integer and the answer is exact.
"""

from __future__ import annotations

import random

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


def _step(rng: random.Random, name: str, item: str, value: int) -> tuple[str, str, int]:
    """One operation: (question sentence, verbose reasoning, new value)."""
    kind = rng.choice(["add", "sub", "mul", "groups"] if value > 1 else ["add", "mul", "groups"])
    if kind == "add":
        k = rng.randint(2, 30)
        new = value + k
        return (f"Then {name} finds {k} more {item}.",
                f"{name} finds {k} more {item}, so we add: {value} + {k} = {new}. "
                f"Let me double-check: {new} - {k} = {value}, which matches.", new)
    if kind == "sub":
        k = rng.randint(1, value - 1)
        new = value - k
        return (f"Then {name} gives away {k} {item}.",
                f"{name} gives away {k} {item}, so we subtract: {value} - {k} = {new}. "
                f"Checking again: {new} + {k} = {value}. Yes.", new)
    if kind == "mul":
        k = rng.randint(2, 4)
        new = value * k
        word = {2: "doubles", 3: "triples", 4: "quadruples"}[k]
        return (f"Then {name}'s collection {word}.",
                f"The collection {word}, which means multiplying by {k}: {value} * {k} = {new}. "
                f"To verify, {new} / {k} = {value}. Correct.", new)
    packs, per = rng.randint(2, 6), rng.randint(2, 9)
    new = value + packs * per
    return (f"Then {name} buys {packs} packs with {per} {item} in each pack.",
            f"{name} buys {packs} packs of {per}, that is {packs} * {per} = {packs * per} {item}. "
            f"Adding them: {value} + {packs * per} = {new}. "
            f"Let me re-check the multiplication: {packs} * {per} = {packs * per}. Good.", new)


def arithmetic_problem(rng: random.Random, index: int) -> dict:
    """One chain with 2 to 5 steps."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(3, 40)
    history = [value]
    sentences, reasoning = [f"{name} has {value} {item}."], []
    reasoning.append(f"{rng.choice(FILLER)} We start with the problem: {name} has {value} "
                     f"{item} at the beginning. So the starting amount is {value}.")
    for s in range(1, rng.randint(2, 5) + 1):
        sentence, why, value = _step(rng, name, item, value)
        history.append(value)
        sentences.append(sentence)
        reasoning.append(f"Step {s}: {rng.choice(FILLER)} {why} So now {name} has {value} {item}.")
    sentences.append(f"How many {item} does {name} have now?")
    trail = " -> ".join(map(str, history))
    reasoning.append(f"To summarize, after all the steps {name} has {value} {item}. "
                     f"Just to be sure, let me go over it once more: {trail}. Yes, that is right.")
    return {
        "id": f"arith-{index:05d}",
        "question": " ".join(sentences),
        "cot": "\n".join(reasoning),
        "answer": str(value),
        "reference": str(value),
    }


def synth_arithmetic(n: int, seed: int) -> list[dict]:
    """`n` problems; the same seed always gives the same problems."""
    rng = random.Random(seed)
    return [arithmetic_problem(rng, i) for i in range(n)]
