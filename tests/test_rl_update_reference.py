"""The policy update against the SPEC formulas written out (tests/rl_reference.py), one sequence
at a time with full-vocabulary logits, where it matters: several PPO updates per step (so the
ratio leaves 1 and both clip bounds act), NAT's Horvitz-Thompson weights and the entropy
selection inside the loss, and `--entropy-normaliser selected`.

The reference draws NAT's tokens from the same generator the update is given and computes the
weights from the inclusion probabilities itself; each case also checks that the plausible bugs
(the 0/1 mask for the weights, one clip bound for two, all tokens for the selected count) give
results the test would reject, so passing means something."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from rl_reference import objective_tensor

from cotprune.rl.selection import entropy_mask, rpc_cuts
from cotprune.rl.update import PolicyPair, Sample, UpdateConfig, policy_update

LR, SEED = 0.5, 7


def _tiny(path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _samples() -> list[Sample]:
    g = torch.Generator().manual_seed(3)
    shapes = [(5, 9), (3, 4), (6, 12), (4, 7), (5, 10), (2, 6)]
    advantages = [1.0, -0.5, 0.8, 2.0, -1.2, 0.6]
    return [Sample(torch.randint(5, 900, (p,), generator=g).tolist(),
                   torch.randint(5, 900, (r,), generator=g).tolist(), a)
            for (p, r), a in zip(shapes, advantages, strict=True)]


def _plain(model, s: Sample, temperature: float):
    """(log p of each response token, entropies) from full logits of one sequence."""
    ids = torch.tensor([s.prompt_ids + s.response_ids])
    p, n = len(s.prompt_ids), len(s.response_ids)
    logits = model(input_ids=ids).logits[0, p - 1:p - 1 + n].float() / temperature
    logp_all = torch.log_softmax(logits, -1)
    lp = logp_all.gather(-1, torch.tensor(s.response_ids)[:, None])[:, 0]
    return lp, -(logp_all.exp() * logp_all).sum(-1)


def _pad(rows, width):
    return torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])


def _nat_weights(cfg: UpdateConfig, lengths: list[int]) -> torch.Tensor:
    """Horvitz-Thompson weights 1/pi on the drawn tokens, from the update's generator seed."""
    gen = torch.Generator().manual_seed(SEED)
    width = max(lengths)
    valid = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    if cfg.token_select == "nat-urs":
        keep = (torch.rand(valid.shape, generator=gen) < cfg.keep_prob) & valid
        return keep.float() / cfg.keep_prob
    if cfg.token_select == "nat-rpc":
        cuts = rpc_cuts(lengths, cfg.cut_floor, gen).tolist()
        w = torch.zeros(valid.shape)
        for i, (n, c) in enumerate(zip(lengths, cuts, strict=True)):
            lo = math.ceil(cfg.cut_floor * n)  # P(cut >= t): 1 up to lo, then uniform
            w[i, :c] = torch.tensor([1.0 / (1.0 if t <= lo else (n - t + 1) / (n - lo + 1))
                                     for t in range(1, c + 1)])
        return w
    return valid.float()


def reference_run(model, frozen, samples, cfg: UpdateConfig, *, bug: str = ""):
    """SGD on the written-out objective; returns (model, mean objective, last ratios)."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    lengths = [len(s.response_ids) for s in samples]
    width = max(lengths)
    valid = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    weights = _nat_weights(cfg, lengths)
    if bug == "mask":
        weights = (weights > 0).float()
    eps_high = cfg.epsilon if bug == "one-clip" or cfg.epsilon_high is None else cfg.epsilon_high
    with torch.no_grad():
        old = [_plain(model, s, cfg.temperature)[0] for s in samples]
        ref = [_plain(frozen, s, cfg.temperature)[0] for s in samples]
    objectives, ratios = [], None
    for _ in range(cfg.updates_per_step):
        lps = [_plain(model, s, cfg.temperature)[0] for s in samples]
        norm = lengths
        if cfg.token_select == "entropy":
            with torch.no_grad():
                ents = _pad([_plain(model, s, cfg.temperature)[1] for s in samples], width)
            weights = entropy_mask(ents, valid, cfg.rho).float()
            if cfg.entropy_normaliser == "selected" and bug != "all-count":
                norm = [int(c) for c in weights.sum(1).tolist()]
        terms = []
        for s, lp, o, r in zip(samples, lps, old, ref, strict=True):
            ratio = torch.exp(lp - o)
            a = s.advantage
            t = torch.minimum(ratio * a, torch.clamp(ratio, 1 - cfg.epsilon, 1 + eps_high) * a)
            terms.append(t - cfg.beta * (torch.exp(r - lp) - (r - lp) - 1))
        obj = objective_tensor(_pad(terms, width), weights, norm, cfg.loss_type,
                               max_new_tokens=cfg.max_new_tokens)
        opt.zero_grad()
        (-obj).backward()
        opt.step()
        objectives.append(float(obj.detach()))
        ratios = torch.cat([torch.exp(lp.detach() - o) for lp, o in zip(lps, old, strict=True)])
    return model, sum(objectives) / len(objectives), ratios


CASES = {
    "nat-urs grpo": (dict(token_select="nat-urs", keep_prob=0.5, loss_type="grpo"), "mask"),
    "nat-rpc dapo": (dict(token_select="nat-rpc", cut_floor=0.25, loss_type="dapo"), "mask"),
    "entropy selected grpo": (dict(token_select="entropy", rho=0.4, loss_type="grpo",
                                   entropy_normaliser="selected"), "all-count"),
    "entropy selected dapo": (dict(token_select="entropy", rho=0.4, loss_type="dapo",
                                   entropy_normaliser="selected"), "all-count"),
    "all dr_grpo kl": (dict(token_select="all", loss_type="dr_grpo", beta=0.1), "one-clip"),
}


def _close(a, b) -> bool:
    return all(torch.allclose(p, q, rtol=1e-4, atol=1e-6) for p, q in zip(
        a.parameters(), b.parameters(), strict=True))


@pytest.fixture
def one_thread():
    """Three SGD updates at lr 0.5 with ratios pushed past the clip bounds amplify float
    reduction order: with 2 threads the two sides drift apart by more than the tolerance, while
    the objective they compute is the same. One thread keeps the comparison about the math."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", list(CASES))
def test_update_matches_written_out_reference(tiny_gpt2_model, case, one_thread):
    extra, bug = CASES[case]
    cfg = UpdateConfig(updates_per_step=3, epsilon=0.05, epsilon_high=0.3, temperature=0.8,
                       batch_tokens=24, max_new_tokens=16, max_grad_norm=0.0, **extra)
    model = _tiny(tiny_gpt2_model)
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    with torch.no_grad():  # a reference policy that differs, so the KL term is not zero
        for p in frozen.parameters():
            p.add_(0.01 * torch.randn_like(p))
    samples = _samples()
    expected, objective, ratios = reference_run(model, frozen, samples, cfg)
    # the last update sees ratios past both clip bounds, and between 1 + eps and 1 + eps_high
    assert (ratios < 1 - cfg.epsilon).any() and (ratios > 1 + cfg.epsilon_high).any()
    assert ((ratios > 1 + cfg.epsilon) & (ratios < 1 + cfg.epsilon_high)).any()

    ours = copy.deepcopy(model)
    stats = policy_update(PolicyPair(ours, frozen), torch.optim.SGD(ours.parameters(), lr=LR),
                          samples, cfg, torch.Generator().manual_seed(SEED))
    assert stats["objective"] == pytest.approx(objective, rel=1e-5, abs=1e-7)
    assert _close(ours, expected)
    buggy, buggy_objective, _ = reference_run(model, frozen, samples, cfg, bug=bug)
    assert not _close(buggy, expected)
    assert buggy_objective != pytest.approx(objective, rel=1e-3)
