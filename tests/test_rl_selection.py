"""Token selection: NAT's Horvitz-Thompson estimates are unbiased, the entropy mask's quantile
(one process and across two gloo processes), and RPC's training forward is really shorter."""

from __future__ import annotations

import math
import os

import pytest
import torch
from rl_reference import reference_objective

from cotprune.rl.selection import (
    entropy_mask,
    entropy_topk_mask,
    nat_rpc,
    nat_urs,
    rpc_inclusion,
    sorted_quantile,
    valid_mask,
)

LENGTHS = [5, 12, 30, 1]


def _terms(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = valid_mask(lengths)
    return (torch.rand(valid.shape, generator=g) * 2 - 0.3) * valid, valid


@pytest.mark.parametrize("method", ["urs", "rpc"])
def test_horvitz_thompson_is_unbiased(method):
    """Monte Carlo mean of the HT loss within 2% of the full loss, for every aggregation.

    One call draws `reps` independent subsets of the same 4-response batch (rows are
    independent), so the mean over replicates is the Monte Carlo mean.
    """
    terms, valid = _terms(LENGTHS)
    reps = 20000
    g = torch.Generator().manual_seed(1)
    big = LENGTHS * reps
    mask, w = nat_urs(big, 0.5, g) if method == "urs" else nat_rpc(big, 0.0, g)
    assert not (mask & ~valid.repeat(reps, 1)).any()
    assert 0.3 < mask.sum().item() / (sum(LENGTHS) * reps) < 0.7  # really a subset
    for loss_type in ("grpo", "dapo", "dr_grpo"):
        full = reference_objective(terms, valid.float(), LENGTHS, loss_type, max_new_tokens=32)
        est = reference_objective(terms.repeat(reps, 1), w, big, loss_type, max_new_tokens=32,
                                  num_responses=len(LENGTHS), total_tokens=sum(LENGTHS)) / reps
        assert est == pytest.approx(full, rel=0.02), loss_type
        one = reference_objective(terms, w[:4], LENGTHS, loss_type, max_new_tokens=32)
        assert one != pytest.approx(full, rel=1e-3)  # a single draw is not the full loss


@pytest.mark.parametrize("a", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("length", [1, 2, 7, 20])
def test_rpc_weights_exactly_unbiased(a, length):
    """E[weight_t] = sum over cuts c of P(c) * 1[t <= c] / pi_t = 1, enumerated exactly."""
    lo = math.ceil(a * length)
    pi = rpc_inclusion(torch.tensor([float(length)], dtype=torch.float64), a, length)[0]
    expected = torch.zeros(length, dtype=torch.float64)
    for c in range(lo, length + 1):
        expected[:c] += (1.0 / (length - lo + 1)) / pi[:c]
    assert torch.allclose(expected, torch.ones(length, dtype=torch.float64))
    assert (pi > 0).all() and (pi <= 1).all()


def test_rpc_masks_are_prefixes_with_cut_floor():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        mask, w = nat_rpc([10, 4], 0.5, g)
        for row, length in zip(mask, [10, 4], strict=True):
            c = int(row.sum())
            assert row[:c].all() and not row[c:].any()
            assert math.ceil(0.5 * length) <= c <= length
        assert (w[~mask] == 0).all()
        assert w[0, 0] == 1.0  # t <= ceil(a L) is always kept: pi = 1


def test_urs_keep_rate_and_weights():
    g = torch.Generator().manual_seed(0)
    mask, w = nat_urs([2000], 0.3, g)
    assert mask.float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert torch.allclose(w[mask], torch.tensor(1 / 0.3))
    assert (w[~mask] == 0).all()


def test_entropy_mask_quantile():
    ent = torch.tensor([[0.1, 0.5, 0.9, 0.3, 7.0], [0.2, 0.8, 0.4, 0.6, 0.7]])
    valid = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    values = ent[valid]
    q = torch.quantile(values, 0.8)
    mask = entropy_mask(ent, valid, rho=0.2)
    assert torch.equal(mask, valid & (ent >= q))
    assert not mask[0, 4]  # padding never selected, however high
    assert mask.sum() == 2  # 9 values: 0.9 and 0.8 reach the 0.8 quantile (0.8)
    expected = torch.quantile(values, 0.37).item()
    assert sorted_quantile(values, 0.37).item() == pytest.approx(expected)


def test_entropy_topk_micro():
    ent = torch.tensor([[0.1, 0.5, 0.9], [0.2, 0.8, 0.4]])
    valid = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    mask = entropy_topk_mask(ent, valid, 0.4)  # ceil(0.4 * 5) = 2 tokens
    assert mask.tolist() == [[False, False, True], [False, True, False]]


def _entropy_worker(rank: int, world: int, port: int, result_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    ent = torch.rand((6, 9), generator=g)
    lengths = [9, 3, 5, 7, 1, 8]
    valid = valid_mask(lengths)
    mine = slice(0, 2) if rank == 0 else slice(2, 6)  # uneven shares of the step
    mask = entropy_mask(ent[mine], valid[mine], rho=0.2)
    torch.save(mask, os.path.join(result_dir, f"mask{rank}.pt"))
    dist.destroy_process_group()


def test_entropy_mask_across_two_processes(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_entropy_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    got = torch.cat([torch.load(tmp_path / "mask0.pt"), torch.load(tmp_path / "mask1.pt")])
    g = torch.Generator().manual_seed(0)
    ent = torch.rand((6, 9), generator=g)
    valid = valid_mask([9, 3, 5, 7, 1, 8])
    assert torch.equal(got, entropy_mask(ent, valid, rho=0.2))  # one process, whole step
    per_process = torch.cat([entropy_mask(ent[:2], valid[:2], 0.2),
                             entropy_mask(ent[2:], valid[2:], 0.2)])
    assert not torch.equal(got, per_process)  # the test can tell a local quantile apart
