"""The pieces of supervised fine-tuning that `distill` is built from, each small and testable.

- `build_example`: a chain laid out by `layout.ChainLayout`; the loss covers exactly the CoT and
  the answer span (targets cot_start .. answer_end), never the prompt.
- `plan_epoch`: the micro-batches of one epoch, a pure function of (lengths, budget, seed,
  epoch), so every process and every resumed run sees the same data order.
- `collate_padded` / `collate_packed`: a micro-batch as tensors. Packed means one row, position
  ids that restart at every sequence and no attention mask: transformers then builds a
  block-diagonal causal mask from the position ids (SDPA, eager) or runs variable-length
  attention (flash-attention), so no compute goes to padding. Padded batches are length-grouped
  instead, so little does.
- `target_nll`: summed NLL of the target tokens, projecting to the vocabulary only at target
  positions and one chunk at a time, forward and backward (`parts.logprobs`).
- `lr_factor`: linear warm-up then cosine decay to zero.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cotprune.data.layout import ChainLayout
from cotprune.training.sampling import ratio_question

PACKINGS = ("auto", "pack", "group")
WINDOW_BATCHES = 32  # length grouping sorts within windows of about this many micro-batches


@dataclass(frozen=True)
class Example:
    """One training sequence; targets are the tokens at positions [loss_start, loss_end)."""

    input_ids: tuple[int, ...]
    loss_start: int
    loss_end: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return self.loss_end - self.loss_start


def build_example(chain_layout: ChainLayout, question: str, cot: str, answer: str,
                  keep_ratio: float | None = None) -> Example:
    """Lay a (pruned) chain out; with `keep_ratio` the ratio is written into the prompt."""
    lay = chain_layout.layout(ratio_question(question, keep_ratio), cot, answer)
    return Example(tuple(lay.input_ids), lay.cot_start, lay.answer_end)


# --- data order ------------------------------------------------------------------------------

def _fill(order: list[int], lengths: Sequence[int], budget: int, packed: bool) -> list[list[int]]:
    """Cut `order` into batches: sum of lengths (packed) or rows x longest (padded) <= budget."""
    batches: list[list[int]] = []
    current: list[int] = []
    used = longest = 0
    for i in order:
        n = lengths[i]
        cost = used + n if packed else (len(current) + 1) * max(longest, n)
        if current and cost > budget:
            batches.append(current)
            current, used, longest = [], 0, 0
        current.append(i)
        used += n
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches


def plan_epoch(lengths: Sequence[int], batch_tokens: int, seed: int, epoch: int, *,
               packed: bool) -> list[list[int]]:
    """Micro-batches of one epoch: shuffled, length-grouped within windows, batch order shuffled.

    A sequence longer than the budget gets a micro-batch of its own.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mean = max(1, sum(lengths) // max(1, len(lengths)))
    window = max(1, WINDOW_BATCHES * max(1, batch_tokens // mean))
    batches: list[list[int]] = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: (-lengths[i], i))
        batches += _fill(chunk, lengths, batch_tokens, packed)
    rng.shuffle(batches)
    return batches


# --- collation -------------------------------------------------------------------------------

@dataclass
class MicroBatch:
    """Model inputs plus where the targets are: rows of the flattened hidden states."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    hidden_index: torch.Tensor  # flat index (row * width + position - 1) predicting a target
    targets: torch.Tensor
    n_tokens: int  # real (non-pad) tokens

    def to(self, device) -> MicroBatch:
        def move(t):
            return None if t is None else t.to(device, non_blocking=True)

        return MicroBatch(move(self.input_ids), move(self.position_ids),
                          move(self.attention_mask), move(self.hidden_index),
                          move(self.targets), self.n_tokens)

    @property
    def n_targets(self) -> int:
        return int(self.targets.numel())


def _targets(examples: Sequence[Example], offsets: Sequence[int]):
    index, targets = [], []
    for ex, off in zip(examples, offsets, strict=True):
        index.extend(range(off + ex.loss_start - 1, off + ex.loss_end - 1))
        targets.extend(ex.input_ids[ex.loss_start:ex.loss_end])
    return torch.tensor(index, dtype=torch.long), torch.tensor(targets, dtype=torch.long)


def collate_padded(examples: Sequence[Example], pad_id: int) -> MicroBatch:
    """Right-padded rows with a 2-D attention mask."""
    width = max(len(ex) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, ex in enumerate(examples):
        ids[r, :len(ex)] = torch.tensor(ex.input_ids, dtype=torch.long)
        mask[r, :len(ex)] = 1
    positions = torch.arange(width).expand(len(examples), width).contiguous()
    index, targets = _targets(examples, [r * width for r in range(len(examples))])
    return MicroBatch(ids, positions, mask, index, targets, sum(len(ex) for ex in examples))


def collate_packed(examples: Sequence[Example]) -> MicroBatch:
    """All sequences in one row; position ids restart at 0 for each (no attention mask)."""
    ids, positions, offsets = [], [], []
    for ex in examples:
        offsets.append(len(ids))
        ids.extend(ex.input_ids)
        positions.extend(range(len(ex)))
    index, targets = _targets(examples, offsets)
    return MicroBatch(torch.tensor([ids], dtype=torch.long),
                      torch.tensor([positions], dtype=torch.long), None, index, targets, len(ids))


# --- loss ------------------------------------------------------------------------------------

def target_nll(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
               chunk_rows: int | None = None) -> torch.Tensor:
    """Summed NLL (float32) of `targets` from hidden rows [N, H].

    `parts.logprobs.token_logprobs` does the projection: one chunk of logits at a time, in the
    backward pass as well.
    """
    from cotprune.training.parts.logprobs import token_logprobs

    logp, _ = token_logprobs(hidden, head, targets, with_entropy=False, chunk_rows=chunk_rows)
    return -logp.sum()


class TargetLoss(torch.nn.Module):
    """Wraps a causal LM (plain or peft): forward returns the summed NLL of a micro-batch.

    Being a module, it is what DDP or FSDP wrap, so gradient synchronisation sees every forward.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        from cotprune.training.parts.logprobs import TokenScores

        self.scores = TokenScores(model)

    @property
    def model(self) -> torch.nn.Module:
        return self.scores.model

    def decoder_layers(self) -> list[torch.nn.Module]:
        return self.scores.decoder_layers()

    def forward(self, input_ids, position_ids, attention_mask, hidden_index, targets):
        logp, _ = self.scores(input_ids, attention_mask, position_ids, hidden_index, targets)
        return -logp.sum()


def micro_batch_nll(loss_module: torch.nn.Module, batch: MicroBatch) -> torch.Tensor:
    return loss_module(batch.input_ids, batch.position_ids, batch.attention_mask,
                       batch.hidden_index, batch.targets)


# --- schedule --------------------------------------------------------------------------------

def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the peak learning rate at optimiser step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
