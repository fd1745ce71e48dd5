"""`training.parts.logprobs.token_logprobs` against a plain full-vocabulary computation (values
and gradients), and the bytes autograd keeps for the backward, which must not grow with
tokens x vocabulary."""

from __future__ import annotations

import pytest
import torch

from cotprune.training.parts.logprobs import chunk_rows_for, token_logprobs


def _plain(hidden, head, targets, temperature):
    logp_all = torch.log_softmax(head(hidden).float() / temperature, dim=-1)
    logp = logp_all.gather(-1, targets[:, None])[:, 0]
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def _case(n=37, h=16, v=101, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(h, v, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, h, generator=g))
        if bias:
            head.bias.copy_(torch.randn(v, generator=g))
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=g)
    # random weights on both outputs, so a wrong gradient of either shows
    w_lp, w_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)
    return head, hidden, targets, w_lp, w_ent


def _grads(fn, head, hidden, targets, w_lp, w_ent):
    for t in (hidden, *head.parameters()):
        t.grad = None
    logp, ent = fn(hidden, head, targets)
    ((logp * w_lp).sum() + (ent * w_ent).sum()).backward()
    return logp.detach(), ent.detach(), [hidden.grad.clone(),
                                         *[p.grad.clone() for p in head.parameters()]]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_rows", [5, 1000])
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_equal_full_vocabulary(temperature, chunk_rows, bias):
    head, hidden, targets, w_lp, w_ent = _case(bias=bias)
    ref = _grads(lambda h, m, t: _plain(h, m, t, temperature), head, hidden, targets, w_lp, w_ent)
    ours = _grads(lambda h, m, t: token_logprobs(h, m, t, temperature=temperature,
                                                  chunk_rows=chunk_rows),
                  head, hidden, targets, w_lp, w_ent)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(ours[2], ref[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_any_head_module_goes_through_checkpointed_chunks():
    head, hidden, targets, w_lp, w_ent = _case()
    wrapped = torch.nn.Sequential(head)  # not an nn.Linear: the generic path
    ref = _grads(lambda h, m, t: _plain(h, m, t, 0.9), head, hidden, targets, w_lp, w_ent)
    ours = _grads(lambda h, m, t: token_logprobs(h, wrapped, t, temperature=0.9, chunk_rows=4),
                  head, hidden, targets, w_lp, w_ent)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(ours[2], ref[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_without_entropy_and_empty_rows():
    head, hidden, targets, _, _ = _case(n=3)
    logp, ent = token_logprobs(hidden, head, targets, with_entropy=False)
    assert ent is None
    torch.testing.assert_close(logp, _plain(hidden, head, targets, 1.0)[0])
    logp, ent = token_logprobs(hidden[:0], head, targets[:0])
    assert logp.shape == (0,) and ent.shape == (0,)
    assert chunk_rows_for(151_665) == 442 and chunk_rows_for(10) > 10**6


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for the backward, parameters not counted."""
    total, seen = 0, set()

    def pack(t):
        nonlocal total
        if not isinstance(t, torch.nn.Parameter) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_saved_tensors_do_not_grow_with_tokens_times_vocabulary(qwen_tokenizer):
    """The Qwen2.5 vocabulary (151k): chunking the forward alone (`engine.logprob_entropy`)
    keeps every chunk's log-softmax; `token_logprobs` keeps hidden rows and two floats a row."""
    from cotprune.core.engine import logprob_entropy

    vocab, h = len(qwen_tokenizer), 8
    head = torch.nn.Linear(h, vocab, bias=False)
    sizes = {}
    for n in (64, 256):
        hidden = torch.randn(n, h, requires_grad=True)
        targets = torch.randint(0, vocab, (n,))
        sizes[n] = tuple(_saved_bytes(lambda f=f, x=hidden, t=targets: f(x, head, t, chunk_rows=32))
                         for f in (token_logprobs, logprob_entropy))
    ours, forward_chunked = sizes[256][0], sizes[256][1]
    assert forward_chunked >= 256 * vocab * 4  # tokens x vocabulary float32, at least once
    assert ours <= 256 * (h * 4 + 8 + 8) + 1024  # hidden, target id, log-normaliser, entropy
    assert sizes[256][0] / sizes[64][0] == pytest.approx(4, rel=0.1)  # linear in tokens only
