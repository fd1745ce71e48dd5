"""The forward-pass engine every scoring stage shares.

- `plan_batches` sorts sequences by length and cuts them into batches within a token budget
  that waste the fewest tokens on padding.
- `forward_hidden` runs the decoder (SDPA, no logits) on a right-padded batch.
- `logprob_entropy` projects hidden states to the vocabulary in row chunks, so float32 logits of
  the whole batch x vocabulary are never held at once; it returns log p(target) and the entropy.
- `objective_span` / `sequence_objectives` compute J (SPEC "the pruning objective J").

Position p's token is predicted from the hidden state at p - 1; every function here takes target
positions (the token being scored) and does the shift itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cotprune.data.layout import Layout
from cotprune.errors import InputError

OBJECTIVES = ("reason-answer", "answer")
VOCAB_CHUNK_ROWS = 128  # rows of hidden states projected to the vocabulary at a time
# What one more forward costs, in padded tokens: a CPU forward of the default model has about
# 30 tokens' worth of fixed cost, a GPU's many more; 256 keeps batches few on both.
FORWARD_COST_TOKENS = 256


def check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    return objective


def decoder_and_head(model):
    """(decoder returning final normalised hidden states, output projection) of a causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def plan_batches(lengths: Sequence[int], batch_tokens: int, *,
                 forward_cost: int = FORWARD_COST_TOKENS) -> list[list[int]]:
    """Indices grouped into batches, longest first, each with (rows x longest) <= batch_tokens.

    The batches are contiguous runs of the length-sorted order that minimise the padded tokens
    run plus `forward_cost` tokens for each forward (dynamic programming over the cut points).
    Filling every batch to the budget instead pads short sequences to the longest of a wide
    length range: 43% more tokens than the chains hold on 48 GSM8K chains at 8,192 tokens,
    7% with this plan (BENCHMARKS.md, "score"). A single sequence longer than the budget gets a
    batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    width = np.array([max(int(lengths[i]), 1) for i in order], dtype=np.int64)
    n = len(order)
    best = np.zeros(n + 1)  # best[j]: least cost of batching the first j sorted sequences
    start = np.zeros(n + 1, dtype=np.int64)  # where the last batch of that plan starts
    for j in range(1, n + 1):
        # a batch order[i:j] is padded to width[i] >= width[j - 1], so at most this many rows fit
        first = max(0, j - max(1, batch_tokens // int(width[j - 1])))
        i = np.arange(first, j)
        rows = j - i
        padded = rows * width[i]
        cost = np.where((padded <= batch_tokens) | (rows == 1),
                        best[i] + padded + forward_cost, np.inf)
        k = int(np.argmin(cost))
        best[j], start[j] = cost[k], i[k]
    batches: list[list[int]] = []
    j = n
    while j > 0:
        batches.append(order[int(start[j]):j])
        j = int(start[j])
    return batches[::-1]


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask) right-padded to the longest sequence."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[r, :len(s)] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def forward_hidden(model, seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Final hidden states [batch, width, hidden] of right-padded `seqs` (no logits)."""
    decoder, _ = decoder_and_head(model)
    device = next(model.parameters()).device
    ids, mask = pad_right(seqs, pad_id, device)
    return decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state


def logprob_entropy(hidden: torch.Tensor, head, targets: torch.Tensor, *,
                    with_entropy: bool = True, chunk_rows: int = VOCAB_CHUNK_ROWS,
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(targets) and entropy (nats) from hidden rows [N, H] predicting `targets` [N].

    Logits are computed in chunks of `chunk_rows` rows and upcast to float32 one chunk at a time.
    """
    logps, ents = [], []
    for start in range(0, hidden.shape[0], chunk_rows):
        # log_softmax measured ~30% faster than logsumexp on the CPU, and is what the
        # published greedy code computes
        logp = torch.log_softmax(head(hidden[start:start + chunk_rows]).float(), dim=-1)
        tgt = targets[start:start + chunk_rows]
        logps.append(logp.gather(-1, tgt[:, None]).squeeze(-1))
        if with_entropy:
            ents.append(-(logp.exp() * logp).sum(-1))
        del logp
    if not logps:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    return torch.cat(logps), (torch.cat(ents) if with_entropy else None)


def objective_span(layout: Layout, objective: str) -> tuple[int, int]:
    """Target positions [start, end) whose NLL makes up J."""
    start = layout.cot_start if objective == "reason-answer" else layout.answer_start
    return start, layout.answer_end


@torch.no_grad()
def sequence_objectives(model, layouts: Sequence[Layout], objective: str, *,
                        batch_tokens: int, pad_id: int) -> list[float]:
    """J (nats) of each layout, batched by `batch_tokens`."""
    _, head = decoder_and_head(model)
    out = [0.0] * len(layouts)
    for batch in plan_batches([len(x.input_ids) for x in layouts], batch_tokens):
        hidden = forward_hidden(model, [layouts[i].input_ids for i in batch], pad_id)
        rows, targets, owner = [], [], []
        for r, i in enumerate(batch):
            start, end = objective_span(layouts[i], objective)
            rows.append(hidden[r, start - 1:end - 1])
            targets.extend(layouts[i].input_ids[start:end])
            owner += [r] * (end - start)
        logp, _ = logprob_entropy(torch.cat(rows), head,
                                  torch.tensor(targets, device=hidden.device), with_entropy=False)
        sums = torch.zeros(len(batch), dtype=torch.float64, device=hidden.device)
        sums.index_add_(0, torch.tensor(owner, device=hidden.device), -logp.double())
        for r, i in enumerate(batch):
            out[i] = float(sums[r])
    return out
