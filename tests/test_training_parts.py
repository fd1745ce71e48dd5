"""The shared training parts on their own: checkpoints, metrics, LoRA options, wrapping."""

from __future__ import annotations

import json

import pytest
import torch

from cotprune.errors import InputError
from cotprune.training.parts.checkpoint import Checkpoints
from cotprune.training.parts.dist import Dist, wrap_data_parallel
from cotprune.training.parts.lora import LoraOptions
from cotprune.training.parts.metrics import MetricsLog


def _model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)  # frozen: not in the checkpoint
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return model, opt


def test_checkpoints_round_trip_keep_the_last_and_refuse_other_options(tmp_path):
    model, opt = _model_and_optimizer()
    ckpts = Checkpoints(tmp_path / "c", fingerprint="abc", keep=2)
    for step in (1, 2, 3):
        ckpts.save(step, model, opt, extra={"k": step})
    after_save = torch.rand(1)  # what the RNG draws next after the last save
    assert [p.name for p in ckpts.done()] == ["step-000002", "step-000003"]
    assert not list((tmp_path / "c").glob(".*"))  # no temporary left behind
    other, other_opt = _model_and_optimizer(seed=1)
    state = ckpts.load(ckpts.latest(), other, other_opt)
    assert state == {"step": 3, "position": {"step": 3}, "extra": {"k": 3}}
    torch.testing.assert_close(other[1].weight, model[1].weight)
    assert not torch.equal(other[0].weight, model[0].weight)  # frozen weights are not saved
    assert other_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    torch.manual_seed(0)  # the RNG comes back as it was at the save, whatever it is now
    ckpts.load(ckpts.latest(), other, other_opt)
    assert torch.equal(torch.rand(1), after_save)
    with pytest.raises(InputError, match="other data or options"):
        Checkpoints(tmp_path / "c", fingerprint="xyz").load(ckpts.latest(), other, other_opt)


def test_a_checkpoint_from_before_the_parts_still_resumes(tmp_path):
    """distill's own format (rng_cpu / rng_cuda) loads, so an interrupted run can go on."""
    model, opt = _model_and_optimizer()
    path = tmp_path / "step-000004"
    path.mkdir()
    rng = torch.get_rng_state()
    torch.save({"step": 4, "fingerprint": "f", "optimizer": opt.state_dict(), "rng_cpu": rng,
                "rng_cuda": None, "trainable": {n: p.detach().clone() for n, p in
                                                model.named_parameters() if p.requires_grad}},
               path / "state.pt")
    torch.rand(5)
    state = Checkpoints(tmp_path, fingerprint="f").load(path, model, opt)
    assert state["step"] == 4 and torch.equal(torch.get_rng_state(), rng)


def test_metrics_truncate_drops_later_steps_on_rank_0_only(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl", main=True)
    for s in (1, 2, 3):
        log.append({"step": s})
    MetricsLog(tmp_path / "m.jsonl", main=False).truncate(0)  # not rank 0: untouched
    log.truncate(2)
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]


def test_lora_one_default_and_flag_errors():
    assert (LoraOptions().r, LoraOptions().alpha, LoraOptions().dropout) == (16, 32, 0.0)
    assert LoraOptions(targets="q_proj, v_proj").target_modules() == ["q_proj", "v_proj"]
    with pytest.raises(InputError, match="--lora-r"):
        LoraOptions(r=0)
    with pytest.raises(InputError, match="--lora-dropout"):
        LoraOptions(dropout=1.0)


def test_one_process_is_not_wrapped():
    module = torch.nn.Linear(2, 2)
    wrapped = wrap_data_parallel(module, Dist(device=torch.device("cpu")))
    assert wrapped.train is module and wrapped.plain is module and wrapped.kind == "none"
    with wrapped.no_sync():
        pass
