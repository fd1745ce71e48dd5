"""`training/sft`: loss mask, ratio prompts, packed vs padded losses, epoch plan, LR schedule."""

from __future__ import annotations

import pytest
import torch

from cotprune.data.layout import ANSWER_PREFIX, ChainLayout, decode
from cotprune.data.synth import synth_arithmetic
from cotprune.training.sft import (
    Example,
    TargetLoss,
    build_example,
    collate_packed,
    collate_padded,
    lr_factor,
    micro_batch_nll,
    plan_epoch,
)


def loss_mask(example: Example) -> list[bool]:
    """Reference: per position, does the loss include predicting this token? (CoT and answer.)"""
    return [example.loss_start <= p < example.loss_end for p in range(len(example))]


@pytest.mark.parametrize("tok", ["qwen_tokenizer", "gpt2_tokenizer"])
def test_loss_mask_covers_exactly_cot_and_answer(tok, request):
    tokenizer = request.getfixturevalue(tok)
    cl = ChainLayout(tokenizer)
    ex = build_example(cl, "How many?", "First 2, then 3 more, so 5.", "5")
    mask = loss_mask(ex)
    prompt = cl.prompt_ids("How many?")
    assert not any(mask[:len(prompt)])  # never the prompt
    assert all(mask[len(prompt):])      # everything after it: CoT, answer, end of turn
    targets = [t for t, m in zip(ex.input_ids, mask, strict=True) if m]
    assert decode(tokenizer, targets) == "First 2, then 3 more, so 5." + ANSWER_PREFIX + "5" \
        + cl.end_of_turn
    batch = collate_padded([ex, build_example(cl, "Q", "c", "1")], pad_id=0)
    assert batch.targets.tolist()[:len(targets)] == targets


def test_ratio_conditioned_prompt(qwen_tokenizer):
    cl = ChainLayout(qwen_tokenizer)
    ex = build_example(cl, "How many?", "cot", "5", keep_ratio=0.5)
    assert list(ex.input_ids[:ex.loss_start]) == cl.prompt_ids("How many?\n<keep ratio 0.5>")


def _reference_nll(model, ex: Example) -> torch.Tensor:
    """Plain reference: the whole logits of one unpadded sequence, CE over the mask."""
    ids = torch.tensor([ex.input_ids])
    logits = model(input_ids=ids).logits[0].float()
    targets = ids[0, ex.loss_start:ex.loss_end]
    return torch.nn.functional.cross_entropy(logits[ex.loss_start - 1:ex.loss_end - 1], targets,
                                             reduction="sum")


def test_packed_and_padded_losses_equal_unpacked(tiny_qwen_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_model, dtype=torch.float32)
    cl = ChainLayout(tok)
    examples = [build_example(cl, c["question"], c["cot"][:40 * (i + 1)], c["answer"])
                for i, c in enumerate(synth_arithmetic(3, 5))]
    assert len({len(e) for e in examples}) == 3
    loss = TargetLoss(model)

    def value_and_grad(fn):
        model.zero_grad()
        value = fn()
        value.backward()
        return value.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    ref, ref_grad = value_and_grad(lambda: sum(_reference_nll(model, e) for e in examples))
    packed, packed_grad = value_and_grad(lambda: micro_batch_nll(loss, collate_packed(examples)))
    padded, padded_grad = value_and_grad(
        lambda: micro_batch_nll(loss, collate_padded(examples, tok.pad_token_id)))
    assert torch.allclose(packed, ref, rtol=1e-5) and torch.allclose(padded, ref, rtol=1e-5)
    assert torch.allclose(packed_grad, ref_grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(padded_grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_chunked_nll_equals_whole(tiny_gpt2_model):
    from cotprune.training.sft import target_nll

    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(37, 8, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    whole = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    chunked = target_nll(hidden, head, targets, chunk_rows=10)
    assert torch.allclose(whole, chunked, rtol=1e-6)
    g1, = torch.autograd.grad(whole, hidden)
    g2, = torch.autograd.grad(chunked, hidden)
    assert torch.allclose(g1, g2, atol=1e-6)


@pytest.mark.parametrize("packed", [True, False])
def test_plan_epoch_covers_every_example_once_within_budget(packed):
    lengths = [5 + (i * 37) % 90 for i in range(200)]
    plan = plan_epoch(lengths, 300, seed=3, epoch=1, packed=packed)
    assert sorted(i for b in plan for i in b) == list(range(200))
    for b in plan:
        cost = sum(lengths[i] for i in b) if packed else len(b) * max(lengths[i] for i in b)
        assert cost <= 300 or len(b) == 1
    assert plan == plan_epoch(lengths, 300, seed=3, epoch=1, packed=packed)
    assert plan != plan_epoch(lengths, 300, seed=3, epoch=2, packed=packed)


def test_lr_warmup_then_cosine():
    assert lr_factor(0, 10, 2) == 0.5 and lr_factor(1, 10, 2) == 1.0
    assert lr_factor(2, 10, 2) == pytest.approx(1.0)
    assert lr_factor(6, 10, 2) == pytest.approx(0.5)
    assert lr_factor(10, 10, 2) == pytest.approx(0.0)
    assert lr_factor(0, 5, 0) == 1.0


