"""Reward formulas and group advantages (SPEC "RL formulas"), as small pure functions.

Every function takes one prompt's group (or a [groups, G] tensor for advantages), so the trainer
can compute them on gathered group data and outside checks can call them directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from cotprune.errors import InputError

ADVANTAGES = ("grpo", "rloo", "dr_grpo")
HALF_PI = math.pi / 2


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def accuracy_reward(correct: Sequence[bool]) -> list[float]:
    return [1.0 if c else 0.0 for c in correct]


def length_penalty(correct: Sequence[bool], lengths: Sequence[int], alpha: float = 0.1,
                   truncated: Sequence[bool] | None = None) -> list[float]:
    """Arora & Zanette: 1 - alpha * sigmoid(z-scored length among the group's correct answers).

    Incorrect or truncated responses get 0. The statistics use the rewarded responses (correct
    and not truncated), population std, + 1e-7, so a lone correct answer gets 1 - alpha/2.
    """
    truncated = truncated if truncated is not None else [False] * len(correct)
    if not len(correct) == len(lengths) == len(truncated):
        raise ValueError("correct, lengths and truncated must have the same length")
    ok = [bool(c) and not bool(t) for c, t in zip(correct, truncated)]
    kept = [float(n) for n, o in zip(lengths, ok) if o]
    if not kept:
        return [0.0] * len(ok)
    mean = sum(kept) / len(kept)
    std = math.sqrt(sum((n - mean) ** 2 for n in kept) / len(kept))
    return [1.0 - alpha * _sigmoid((n - mean) / (std + 1e-7)) if o else 0.0
            for n, o in zip(lengths, ok)]


def overlong_penalty(length: int, max_new_tokens: int, buffer: int) -> float:
    """DAPO's soft overlong punishment: 0 up to max - buffer, then linear down to -1 at max."""
    if buffer <= 0:
        return 0.0
    expected = max_new_tokens - buffer
    if length <= expected:
        return 0.0
    if length <= max_new_tokens:
        return (expected - length) / buffer
    return -1.0


def bingo_ratios(n_low: float, n_high: float, n_low_ref: float,
                 n_high_ref: float) -> tuple[float, float]:
    """(r_low, r_high); both 0 unless both reference counts are positive (official code)."""
    if n_low_ref > 0 and n_high_ref > 0:
        return n_low / n_low_ref, n_high / n_high_ref
    return 0.0, 0.0


def bingo_reward(correct: bool, n_low: float, n_high: float, n_low_ref: float,
                 n_high_ref: float, w: float, lambda_c: float = 5, lambda_wn: float = 2,
                 lambda_we: float = 5) -> float:
    """Bingo: shrink insignificant tokens when correct; when wrong, trade length via w."""
    r_low, r_high = bingo_ratios(n_low, n_high, n_low_ref, n_high_ref)
    cos_low = math.cos(min(r_low, HALF_PI))
    if correct:
        return 1.0 + lambda_c * cos_low
    return min(0.0, lambda_wn * (cos_low - 1.0) + w * r_high - lambda_we)


def significance_counts(scores: Sequence[float], tau: float = 0.5) -> tuple[int, int]:
    """(N_low, N_high) after min-max normalising one response's scores; low = below tau."""
    if len(scores) == 0:
        return 0, 0
    lo, hi = min(scores), max(scores)
    span = hi - lo
    normed = [(s - lo) / span if span > 0 else 0.0 for s in scores]
    n_low = sum(1 for s in normed if s < tau)
    return n_low, len(normed) - n_low


def least_squares_slope(values: Sequence[float]) -> float:
    """Slope of the least-squares line through (0, v0), (1, v1), ..."""
    n = len(values)
    if n < 2:
        return 0.0
    mx = (n - 1) / 2
    my = sum(values) / n
    sxx = sum((x - mx) ** 2 for x in range(n))
    return sum((x - mx) * (v - my) for x, v in enumerate(values)) / sxx


@dataclass
class BingoSchedule:
    """Bingo's dynamic weight w on r_high for incorrect answers.

    w starts at lambda_we/(pi/2). After `start_step` updates, the least-squares slope of the last
    `window` mean rewards, scaled so the first such slope has magnitude lambda_we/(pi/2), becomes
    s; a flat slope (s <= flat) counts a flat step k and sets w = max(-2 w0, -0.5 k), else k = 0
    and w = s. `update(mean_reward)` is called once per step and returns the w of the next step.
    """

    lambda_we: float = 5.0
    start_step: int = 50
    window: int = 10
    flat: float = 2.5
    history: list[float] = field(default_factory=list)
    first_slope: float | None = None
    flat_steps: int = 0
    w: float | None = None

    def __post_init__(self) -> None:
        if self.w is None:
            self.w = self.w0

    @property
    def w0(self) -> float:
        return self.lambda_we / HALF_PI

    def update(self, mean_reward: float) -> float:
        self.history.append(float(mean_reward))
        if len(self.history) < self.start_step:
            return self.w
        slope = least_squares_slope(self.history[-self.window:])
        if self.first_slope is None:
            self.first_slope = slope
        s = slope * self.w0 / max(1e-6, abs(self.first_slope))
        if s <= self.flat:
            self.flat_steps += 1
            self.w = max(-2.0 * self.w0, -0.5 * self.flat_steps)
        else:
            self.flat_steps = 0
            self.w = s
        return self.w

    def state_dict(self) -> dict:
        return {"history": self.history, "first_slope": self.first_slope,
                "flat_steps": self.flat_steps, "w": self.w}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])
        self.first_slope = state["first_slope"]
        self.flat_steps = int(state["flat_steps"])
        self.w = float(state["w"])


def group_advantages(rewards, kind: str):
    """Advantages of a [groups, G] reward tensor.

    grpo: (R - mean) / (std + 1e-4), std the sample std (unbiased, as TRL's GRPO);
    rloo: R_i - mean of the others; dr_grpo: R - mean.
    """
    import torch

    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    if rewards.dim() == 1:
        rewards = rewards[None]
    g = rewards.shape[1]
    mean = rewards.mean(dim=1, keepdim=True)
    if kind == "grpo":
        std = rewards.std(dim=1, keepdim=True) if g > 1 else torch.zeros_like(mean)
        return (rewards - mean) / (std + 1e-4)
    if kind == "rloo":
        if g < 2:
            raise InputError("--advantage rloo needs --samples of at least 2")
        return rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
    if kind == "dr_grpo":
        return rewards - mean
    raise InputError(f"--advantage must be one of {', '.join(ADVANTAGES)}, got {kind!r}")
