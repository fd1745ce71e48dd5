"""RL formulas against values computed by hand from SPEC "RL formulas"."""

from __future__ import annotations

import math

import pytest
import torch
from rl_reference import reference_objective

from cotprune.errors import InputError
from cotprune.rl import rewards as R
from cotprune.rl.loss import kl_k3, ppo_clip_term, token_coefficients


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_length_penalty_group_with_truncation():
    # rewarded lengths 10 and 20: mean 15, population std 5 -> z = -1, +1
    got = R.length_penalty([True, True, False, True], [10, 20, 30, 30], 0.1,
                           truncated=[False, False, False, True])
    assert got == pytest.approx([1 - 0.1 * sig(-1), 1 - 0.1 * sig(1), 0.0, 0.0])
    assert got[0] == pytest.approx(0.97310586)


def test_length_penalty_single_correct_and_none():
    assert R.length_penalty([True, False, False], [50, 10, 10], 0.1) == \
        pytest.approx([0.95, 0.0, 0.0])
    assert R.length_penalty([False, False], [5, 6], 0.3) == [0.0, 0.0]
    # alpha scales the penalty; equal lengths -> z = 0 -> 1 - alpha/2
    assert R.length_penalty([True, True], [7, 7], 0.4) == pytest.approx([0.8, 0.8])


def test_bingo_correct():
    # r_low = 5/10 = 0.5 -> 1 + 5 cos(0.5)
    assert R.bingo_reward(True, 5, 10, 10, 10, w=3.0) == pytest.approx(1 + 5 * 0.87758256)
    # r_low = 2 > pi/2 is capped: cos(pi/2) = 0
    assert R.bingo_reward(True, 20, 10, 10, 10, w=3.0) == pytest.approx(1.0)
    # a reference count of 0: both ratios 0 -> 1 + lambda_c
    assert R.bingo_reward(True, 5, 10, 0, 10, w=3.0) == pytest.approx(6.0)


def test_bingo_incorrect():
    # r_low 0.5, r_high 2: 2 (cos .5 - 1) + w*2 - 5
    base = 2 * (0.87758256 - 1)
    assert R.bingo_reward(False, 5, 20, 10, 10, w=1.0) == pytest.approx(base + 2 - 5)
    assert R.bingo_reward(False, 5, 20, 10, 10, w=3.1831) == 0.0  # min(0, positive)
    assert R.bingo_reward(False, 5, 20, 0, 0, w=1.0) == pytest.approx(-5.0)
    assert R.bingo_reward(False, 5, 20, 10, 10, w=1.0, lambda_wn=1, lambda_we=3) == \
        pytest.approx(0.5 * base + 2 - 3)


def test_significance_counts_min_max():
    # normalised: 0, 0.25, 0.5, 1 -> below 0.5: two tokens
    assert R.significance_counts([1.0, 2.0, 3.0, 5.0], 0.5) == (2, 2)
    assert R.significance_counts([2.0, 2.0], 0.5) == (2, 0)
    assert R.significance_counts([], 0.5) == (0, 0)


def test_bingo_schedule_by_hand():
    s = R.BingoSchedule(lambda_we=5, start_step=3, window=3)
    w0 = 5 / (math.pi / 2)
    assert s.w == pytest.approx(w0)
    assert s.update(0.0) == pytest.approx(w0)
    assert s.update(1.0) == pytest.approx(w0)
    assert s.update(2.0) == pytest.approx(w0)  # slope 1 = first slope -> s = w0 > 2.5
    assert s.flat_steps == 0
    assert s.update(2.0) == pytest.approx(-0.5)  # slope 0.5 -> s = 1.59 <= 2.5, k = 1
    assert s.update(2.0) == pytest.approx(-1.0)  # slope 0 -> k = 2
    for _ in range(20):
        w = s.update(2.0)
    assert w == pytest.approx(-2 * w0)  # floored at -2 lambda_we / (pi/2)
    assert s.update(20.0) > 2.5  # a steep rise resets to s


def test_bingo_schedule_waits_for_step_50():
    s = R.BingoSchedule()
    for i in range(49):
        assert s.update(float(i % 2)) == pytest.approx(5 / (math.pi / 2))
    s.update(0.0)
    assert s.first_slope is not None
    restored = R.BingoSchedule()
    restored.load_state_dict(s.state_dict())
    assert restored.update(1.0) == s.update(1.0)


def test_least_squares_slope():
    assert R.least_squares_slope([1, 3, 5, 7]) == pytest.approx(2.0)
    assert R.least_squares_slope([1, 2, 2]) == pytest.approx(0.5)


def test_overlong_penalty():
    assert R.overlong_penalty(70, 100, 20) == 0.0
    assert R.overlong_penalty(80, 100, 20) == 0.0
    assert R.overlong_penalty(90, 100, 20) == pytest.approx(-0.5)
    assert R.overlong_penalty(90, 100, 0) == 0.0
    assert R.overlong_penalty(95, 100, 20) == pytest.approx(-0.75)
    assert R.overlong_penalty(100, 100, 20) == pytest.approx(-1.0)


def test_advantages_by_hand():
    r = [[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 5.0]]
    std = math.sqrt(4 * 0.25 / 3)  # sample std of the first group
    grpo = R.group_advantages(r, "grpo")
    assert grpo[0].tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 1 +
                                             [-0.5 / (std + 1e-4), 0.5 / (std + 1e-4)])
    assert grpo[1, 3] == pytest.approx(2.25 / (1.5 + 1e-4))
    rloo = R.group_advantages(r, "rloo")
    assert rloo[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert R.group_advantages(r, "rloo")[1].tolist() == pytest.approx([-1, -1, -1, 3])
    assert R.group_advantages(r, "dr_grpo")[1].tolist() == pytest.approx([-0.75] * 3 + [2.25])
    with pytest.raises(InputError):
        R.group_advantages([[1.0]], "rloo")


def test_ppo_clip_term_and_kl():
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    old = torch.zeros(4)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    got = ppo_clip_term(logp, old, adv, eps_low=0.2, eps_high=0.28)
    assert got.tolist() == pytest.approx([1.28, -1.5, -0.8, 0.5])
    assert kl_k3(torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))).item() == \
        pytest.approx(0.5 - math.log(0.5) - 1)
    with_kl = ppo_clip_term(logp[:1], old[:1], adv[:1], beta=0.1, ref_logp=torch.zeros(1))
    assert with_kl.item() == pytest.approx(1.2 - 0.1 * (1 / 1.5 + math.log(1.5) - 1))


def _coefficient_objective(terms, weights, lengths, loss_type, **step):
    """The product's form (rl/update.py): sum_i c_i sum_t w_it l_it."""
    coef = token_coefficients(lengths, loss_type, max_new_tokens=4, **step)
    return float((coef * (terms * weights).double().sum(dim=1)).sum())


def test_three_loss_aggregations_by_hand():
    terms = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0]])
    weights = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    lengths = [2, 3]
    by_hand = {"grpo": (3 / 2 + 12 / 3) / 2, "dapo": 15 / 5, "dr_grpo": 15 / 8}
    for lt, value in by_hand.items():
        assert reference_objective(terms, weights, lengths, lt, max_new_tokens=4) == \
            pytest.approx(value), lt
        assert _coefficient_objective(terms, weights, lengths, lt) == pytest.approx(value), lt
        # split across two "micro-batches" with the step's denominators: same total
        parts = sum(_coefficient_objective(terms[i:i + 1], weights[i:i + 1], lengths[i:i + 1],
                                           lt, num_responses=2, total_tokens=5)
                    for i in range(2))
        assert parts == pytest.approx(value), lt
    with pytest.raises(InputError):
        token_coefficients([1], "bogus", max_new_tokens=4)
