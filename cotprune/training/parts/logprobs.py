"""Token log-probs and entropies from hidden states, with gradients, one chunk of logits at a time.

`token_logprobs(hidden, head, targets)` returns log p(target) and the entropy of each row's
next-token distribution. Neither the forward nor the backward pass ever holds more than one
chunk x vocabulary of float32 logits: the forward keeps only hidden states, targets and the
per-row log-normaliser, and the backward recomputes each chunk's logits, turns them into the
logit gradient in place and projects it back (`_ChunkedHead`). Under autograd a plain
`log_softmax` over all rows would keep tokens x vocabulary floats for the backward (about 5 GB
at 8,192 tokens with a 152k vocabulary), which chunking the forward alone does not avoid.

For a row with logits z (already divided by the temperature), p = softmax(z):

    log p_t = z_t - lse(z),   H = lse(z) - sum_j p_j z_j
    d log p_t / dz = onehot(t) - p,   dH / dz = -p * (log p + H)

Heads that are not a plain `torch.nn.Linear` (an adapter on the output layer, say) go through
activation checkpointing per chunk instead, which has the same memory bound.
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 2**28  # float32 logits of one chunk: 256 MiB (441 rows of a 152k vocabulary)


def chunk_rows_for(vocab: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk so that one chunk's float32 logits take about `chunk_bytes`."""
    return max(1, chunk_bytes // (4 * max(1, vocab)))


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias, temperature: float):
    z = torch.nn.functional.linear(hidden, weight, bias).float()
    return z if temperature == 1.0 else z / temperature


def _stats(z: torch.Tensor, targets: torch.Tensor, with_entropy: bool):
    """(log p(target), entropy or None, lse) of float32 logits [n, V]."""
    # log_softmax measured ~30% faster than logsumexp on the CPU (see core.engine)
    logp_all = torch.log_softmax(z, dim=-1)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    lse = z.gather(-1, targets[:, None]).squeeze(-1) - logp
    ent = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    return logp, ent, lse


class _ChunkedHead(torch.autograd.Function):
    """(log p(targets), entropies) [N] from hidden [N, H] and a linear head (weight, bias)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_rows, with_entropy):
        logps, ents, lses = [], [], []
        for s in range(0, hidden.shape[0], chunk_rows):
            z = _logits(hidden[s:s + chunk_rows], weight, bias, temperature)
            logp, ent, lse = _stats(z, targets[s:s + chunk_rows], with_entropy)
            logps.append(logp)
            lses.append(lse)
            if with_entropy:
                ents.append(ent)
            del z
        logp = torch.cat(logps)
        ent = torch.cat(ents) if with_entropy else logp.new_zeros(logp.shape)
        ctx.save_for_backward(hidden, weight, bias, targets, torch.cat(lses), ent)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        ctx.mark_non_differentiable(*(() if with_entropy else (ent,)))
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        if grad_logp is None and grad_ent is None:
            return None, None, None, None, None, None, None
        t, rows = ctx.temperature, ctx.chunk_rows
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) \
            if need_b and bias is not None else None
        for s in range(0, hidden.shape[0], rows):
            sl = slice(s, s + rows)
            h = hidden[sl]
            logp_all = _logits(h, weight, bias, t).sub_(lse[sl, None])  # one chunk buffer
            g = grad_logp[sl].float()[:, None] if grad_logp is not None else None
            # dL/dz = g (onehot - p) - g_ent p (log p + H), built in place in logp_all
            if grad_ent is None:
                dz = logp_all.exp_().mul_(-g)
            else:
                p = logp_all.exp()
                dz = logp_all.add_(ent[sl, None]).mul_(p).mul_(-grad_ent[sl].float()[:, None])
                if g is not None:
                    dz.sub_(p.mul_(g))
                del p
            if g is not None:
                dz.scatter_add_(-1, targets[sl, None], g)
            if t != 1.0:
                dz.div_(t)
            if need_h:
                grad_h[sl] = (dz.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w.addmm_(dz.t(), h.float())
            if grad_b is not None:
                grad_b.add_(dz.sum(0))
            del dz, logp_all
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias.dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None


def _checkpointed(hidden, head, targets, temperature, chunk_rows, with_entropy):
    """The same for any head module: each chunk's logits are recomputed in the backward."""
    from torch.utils.checkpoint import checkpoint

    def chunk(h, tgt):
        z = head(h).float()
        z = z if temperature == 1.0 else z / temperature
        logp, ent, _ = _stats(z, tgt, with_entropy)
        return logp, (ent if with_entropy else logp.new_zeros(logp.shape))

    logps, ents = [], []
    for s in range(0, hidden.shape[0], chunk_rows):
        logp, ent = checkpoint(chunk, hidden[s:s + chunk_rows], targets[s:s + chunk_rows],
                               use_reentrant=False)
        logps.append(logp)
        ents.append(ent)
    return torch.cat(logps), torch.cat(ents)


def token_logprobs(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, *,
                   temperature: float = 1.0, with_entropy: bool = True,
                   chunk_rows: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(targets) [N] and entropies [N] (nats, float32; None without `with_entropy`) of the
    next-token distributions softmax(head(hidden) / temperature), differentiable in `hidden` and
    the head's parameters, with one chunk of `chunk_rows` rows of logits in memory at a time."""
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    if chunk_rows is None:
        chunk_rows = chunk_rows_for(_vocab(head))
    targets = targets.to(hidden.device)
    if isinstance(head, torch.nn.Linear):
        logp, ent = _ChunkedHead.apply(hidden, head.weight, head.bias, targets,
                                       float(temperature), int(chunk_rows), with_entropy)
    else:
        logp, ent = _checkpointed(hidden, head, targets, float(temperature), int(chunk_rows),
                                  with_entropy)
    return logp, (ent if with_entropy else None)


def _vocab(head: torch.nn.Module) -> int:
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(getattr(head, "out_features", 1))


class TokenScores(torch.nn.Module):
    """A causal LM (plain or peft) as a module whose forward returns (log p(targets), entropies)
    at chosen rows of the flattened hidden states, with the vocabulary projection chunked.

    Being a module, it is what DDP or FSDP wrap, so gradient synchronisation sees every forward,
    and `distill` and `rl` run the same forward.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, hidden_index, targets, *,
                temperature: float = 1.0, with_entropy: bool = False):
        from cotprune.core.engine import decoder_and_head

        decoder, head = decoder_and_head(self.model)
        hidden = decoder(input_ids=input_ids, position_ids=position_ids,
                         attention_mask=attention_mask, use_cache=False).last_hidden_state
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, hidden_index)
        return token_logprobs(rows, head, targets, temperature=temperature,
                              with_entropy=with_entropy)

    def decoder_layers(self) -> list[torch.nn.Module]:
        """The transformer blocks, the units FSDP shards one at a time."""
        from cotprune.core.engine import decoder_and_head

        decoder, _ = decoder_and_head(self.model)
        layers = getattr(decoder, "layers", None) or getattr(decoder, "h", None) or []
        return list(layers)
