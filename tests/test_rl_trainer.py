"""The policy update against a plain reference computation, RPC's shorter forward, the CLI's
errors and --resume on a tiny model, and (slow) short runs of every reward and token selection
on the default model."""

from __future__ import annotations

import copy
import json

import pyarrow as pa
import pytest
import torch
from conftest import run_cli, summary_of

from cotprune.data.files import CHAIN_SCHEMA, write_table
from cotprune.data.synth import synth_arithmetic
from cotprune.rl.update import PolicyPair, Sample, UpdateConfig, policy_update


class RecordingOptimizer:
    """Stands in for an optimiser: keeps the gradients of each step, changes nothing."""

    def __init__(self, params):
        self.params = list(params)
        self.grads = []

    def step(self):
        self.grads.append([p.grad.detach().clone() for p in self.params])

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def _tiny(path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _samples(lengths, seed=0, vocab=1000):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, (p, r) in enumerate(lengths):
        out.append(Sample(torch.randint(5, vocab, (p,), generator=g).tolist(),
                          torch.randint(5, vocab, (r,), generator=g).tolist(),
                          advantage=[1.0, -0.5, 0.3, 2.0][k % 4]))
    return out


def _plain_objective(model, frozen, samples, loss_type, *, temperature, beta, eps, max_new):
    """The SPEC formula written out directly, one sequence at a time, full logits."""
    terms = []
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        p, n = len(s.prompt_ids), len(s.response_ids)
        tgt = torch.tensor(s.response_ids)
        logits = model(input_ids=ids).logits[0, p - 1:p - 1 + n] / temperature
        lp = torch.log_softmax(logits.float(), -1).gather(-1, tgt[:, None])[:, 0]
        with torch.no_grad():
            rl = frozen(input_ids=ids).logits[0, p - 1:p - 1 + n] / temperature
            ref = torch.log_softmax(rl.float(), -1).gather(-1, tgt[:, None])[:, 0]
        ratio = torch.exp(lp - lp.detach())
        a = s.advantage
        term = torch.minimum(ratio * a, torch.clamp(ratio, 1 - eps, 1 + eps) * a)
        term = term - beta * (torch.exp(ref - lp) - (ref - lp) - 1)
        terms.append(term)
    n_resp = len(samples)
    if loss_type == "grpo":
        return sum(t.sum() / len(t) for t in terms) / n_resp
    if loss_type == "dapo":
        return sum(t.sum() for t in terms) / sum(len(t) for t in terms)
    return sum(t.sum() for t in terms) / (n_resp * max_new)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_full_token_update_matches_plain_reference(tiny_qwen_model, loss_type):
    model = _tiny(tiny_qwen_model)
    frozen = copy.deepcopy(model).eval()
    with torch.no_grad():  # a reference policy that differs, so the KL term is not zero
        for p in frozen.parameters():
            p.add_(0.01 * torch.randn_like(p))
    samples = _samples([(6, 9), (4, 3), (7, 12)])
    cfg = UpdateConfig(loss_type=loss_type, temperature=0.7, beta=0.1, epsilon=0.2,
                       batch_tokens=16, max_new_tokens=16, max_grad_norm=0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = RecordingOptimizer(params)
    stats = policy_update(PolicyPair(model, frozen), opt, samples, cfg, torch.Generator())
    ours = opt.grads[0]

    plain = _plain_objective(model, frozen, samples, loss_type, temperature=0.7, beta=0.1,
                             eps=0.2, max_new=16)
    model.zero_grad()
    (-plain).backward()
    assert stats["objective"] == pytest.approx(plain.item(), rel=1e-5, abs=1e-7)
    assert stats["tokens_trained"] == 24
    # float32 sums in another order: ~1e-5 relative error
    for g, p in zip(ours, params, strict=True):
        assert (g - p.grad).norm() <= 1e-4 * p.grad.norm()


def test_rpc_training_forward_is_really_shorter(tiny_qwen_model):
    from cotprune.core.engine import decoder_and_head

    model = _tiny(tiny_qwen_model)
    decoder, _ = decoder_and_head(model)
    seen = []
    decoder.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["attention_mask"].sum(1).tolist()),
        with_kwargs=True)
    samples = _samples([(5, 40), (6, 40), (4, 40), (5, 40)], seed=1)
    tokens = {}
    for mode in ("all", "nat-rpc"):
        seen.clear()
        cfg = UpdateConfig(token_select=mode, cut_floor=0.0, max_new_tokens=40)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        stats = policy_update(PolicyPair(model), opt, samples, cfg,
                              torch.Generator().manual_seed(3))
        tokens[mode] = sum(sum(x) for x in seen)
        assert tokens[mode] == stats["forward_tokens"]
    from cotprune.rl.selection import rpc_cuts

    cuts = rpc_cuts([40] * 4, 0.0, torch.Generator().manual_seed(3)).tolist()
    assert tokens["all"] == 20 + 160
    dropped = sum(len(s.prompt_ids) for s, c in zip(samples, cuts, strict=True) if c == 0)
    assert tokens["nat-rpc"] == 20 - dropped + sum(cuts)
    assert tokens["nat-rpc"] < tokens["all"]


def _prompts(tmp_path, n=4, drop=None):
    rows = synth_arithmetic(n, seed=0)
    table = pa.Table.from_pylist(rows, schema=CHAIN_SCHEMA)
    if drop:
        table = table.drop_columns([drop])
    path = tmp_path / "prompts.parquet"
    write_table(table, path)
    return path


TINY = ["--max-steps", "2", "--prompts-per-step", "2", "--samples", "2",
        "--max-new-tokens", "6"]


def test_cli_bad_input_exits_2_without_output(tiny_qwen_model, tmp_path):
    prompts = _prompts(tmp_path)
    cases = [["--reward", "nope"], ["--token-select", "half"],
             ["--reward", "bingo", "--significance", "bogus"],
             ["--advantage", "rloo", "--samples", "1"], ["--rho", "0"]]
    for extra in cases:
        out = tmp_path / "out"
        code, _, err = run_cli("rl", prompts, "-o", out, "--model", tiny_qwen_model, *extra)
        assert code == 2, (extra, err)
        assert not out.exists()
    code, _, err = run_cli("rl", _prompts(tmp_path, drop="reference"), "-o", tmp_path / "o2",
                           "--model", tiny_qwen_model)
    assert code == 2 and "reference" in err and not (tmp_path / "o2").exists()


def test_cli_resume_equals_uninterrupted(tiny_gpt2_model, tmp_path):
    prompts = _prompts(tmp_path)
    args = ["--model", str(tiny_gpt2_model), *TINY, "--reward", "bingo", "--save-every", "1",
            "--seed", "5"]
    code, out, err = run_cli("rl", prompts, "-o", tmp_path / "a", *args)
    assert code == 0, err
    assert summary_of(out)["steps"] == 2
    a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in a] == [1, 2]
    assert (tmp_path / "a" / "model" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["command"] == "rl"

    stop = [x if x != "2" or i != 1 else "1" for i, x in enumerate(TINY)]
    args1 = ["--model", str(tiny_gpt2_model), *stop, "--reward", "bingo", "--save-every", "1",
             "--seed", "5"]
    assert run_cli("rl", prompts, "-o", tmp_path / "b", *args1)[0] == 0
    code, _, err = run_cli("rl", prompts, "-o", tmp_path / "b", *args)  # no --resume
    assert code == 2 and "--resume" in err
    code, _, err = run_cli("rl", prompts, "-o", tmp_path / "b", *args, "--resume")
    assert code == 0, err
    b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in b] == [1, 2]
    for ma, mb in zip(a, b, strict=True):
        for key in ("reward_mean", "mean_length", "objective", "tokens_trained"):
            assert ma[key] == pytest.approx(mb[key], rel=1e-5, abs=1e-6), key
    assert a[1]["reward_mean"] != a[0]["reward_mean"]  # the steps differ: a real comparison


@pytest.mark.slow
def test_default_model_runs_every_reward_and_selection(default_model_cache, tmp_path):
    prompts = _prompts(tmp_path, n=1)
    runs = [["--reward", "accuracy", "--token-select", "all"],
            ["--reward", "length", "--token-select", "nat-rpc"],
            ["--reward", "bingo", "--token-select", "entropy"],
            ["--reward", "length", "--token-select", "nat-urs", "--overlong-buffer", "4"]]
    for k, extra in enumerate(runs):
        out = tmp_path / f"run{k}"
        code, stdout, err = run_cli("rl", prompts, "-o", out, "--max-steps", "1",
                                    "--prompts-per-step", "1", "--samples", "2",
                                    "--max-new-tokens", "8", "--temperature", "0.8", *extra)
        assert code == 0, err[-2000:]
        metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(metrics) == 1 and summary_of(stdout)["steps"] == 1
        m = metrics[0]
        assert 0 < m["mean_length"] <= 8 and m["tokens_trained"] > 0
        for key in ("reward_mean", "accuracy", "step_time_s", "peak_memory_mb"):
            assert key in m
