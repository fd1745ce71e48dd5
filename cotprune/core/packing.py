"""How many candidate rows share one forward (the layout parts of `runner.py`).

- `lanes` spreads blocks of tokens over balanced lanes (the rows of a forward).
- `lay_out` places the blocks of each lane one after another, with their true positions, and
  builds the 4D additive mask (`block_mask`) that keeps each block to its own prefix.
- `stack_kv` batches rows' cached keys and values; `grouped_query_sdpa` lets torch's CPU
  attention take grouped heads under a mask without a copy.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass

import torch


def lanes(keys: list[int], sizes: dict[int, int], width: int) -> list[list[int]]:
    """Keys in as few lanes as hold their blocks at `width` tokens a lane, balanced (each block,
    longest first, goes to the emptiest lane), fullest lanes first; a block longer than `width`
    ends up in a lane of its own."""
    out: list[list[int]] = [[] for _ in range(-(-sum(sizes[k] for k in keys) // width))]
    fill = [0] * len(out)
    for k in sorted(keys, key=lambda k: (-sizes[k], k)):
        lane = min(range(len(out)), key=lambda n: (fill[n], n))
        out[lane].append(k)
        fill[lane] += sizes[k]
    return [out[n] for n in sorted(range(len(out)), key=lambda n: -fill[n]) if out[n]]


def block_mask(starts: list[int], sizes: list[int], past_len: int, dtype: torch.dtype,
               width: int | None = None) -> torch.Tensor:
    """Additive attention mask [1, 1, T, past_len + T] of a packed row of T = `width` tokens
    (default: sum(sizes); positions after the blocks are padding, seen by nothing).

    Block r (sizes[r] tokens, packed one after another) sees the shared past before starts[r]
    and its own earlier tokens: 0 there, the dtype's minimum elsewhere."""
    total = sum(sizes) if width is None else width
    blocked = torch.finfo(dtype).min
    mask = torch.full((1, 1, total, past_len + total), blocked, dtype=dtype)
    causal = torch.full((max(sizes), max(sizes)), blocked, dtype=dtype).triu(1)
    off = 0
    for start, size in zip(starts, sizes):
        mask[0, 0, off:off + size, :start] = 0
        mask[0, 0, off:off + size, past_len + off:past_len + off + size] = causal[:size, :size]
        off += size
    return mask


@dataclass
class PackLayout:
    """Inputs of one packed forward on a shared past of `past_len` positions."""

    tokens: torch.Tensor  # [lanes, width]; padding is token 0, seen by nothing
    positions: torch.Tensor  # [lanes, width]
    mask: torch.Tensor  # [lanes, 1, width, past_len + width]
    place: list[tuple[int, int]]  # per block: (lane, offset in the lane)


def lay_out(lanes_of_blocks: list[list[int]], blocks: list[list[int]], starts: list[int],
            past_len: int, dtype: torch.dtype) -> PackLayout:
    """Block i (token ids `blocks[i]`, at positions starts[i] on) goes into its lane after the
    lane's earlier blocks; it sees the past before starts[i] and its own earlier tokens."""
    sizes = [len(block) for block in blocks]
    width = max(sum(sizes[i] for i in lane) for lane in lanes_of_blocks)
    tokens = torch.zeros((len(lanes_of_blocks), width), dtype=torch.long)
    positions = torch.zeros((len(lanes_of_blocks), width), dtype=torch.long)
    place = [(0, 0)] * len(blocks)
    for lane, members in enumerate(lanes_of_blocks):
        for i, off in zip(members, itertools.accumulate((sizes[i] for i in members), initial=0)):
            place[i] = lane, off
            tokens[lane, off:off + sizes[i]] = torch.tensor(blocks[i])
            positions[lane, off:off + sizes[i]] = torch.arange(starts[i], starts[i] + sizes[i])
    mask = torch.cat([block_mask([starts[i] for i in members], [sizes[i] for i in members],
                                 past_len, dtype, width) for members in lanes_of_blocks])
    return PackLayout(tokens, positions, mask, place)


def stack_kv(kvs: list[list[tuple[torch.Tensor, torch.Tensor]]], length: int):
    """Per layer, the first `length` positions of several rows' KV as one batch."""
    return [(torch.cat([kv[layer][0][:, :, :length] for kv in kvs]),
             torch.cat([kv[layer][1][:, :, :length] for kv in kvs]))
            for layer in range(len(kvs[0]))]


FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextlib.contextmanager
def grouped_query_sdpa(device: torch.device):
    """On the CPU, let SDPA attend with grouped query heads directly under a mask.

    transformers repeats the key and value heads (a copy per layer) whenever a mask is given,
    because CUDA kernels need it; torch's CPU kernel does not, and skipping the copy made exact
    greedy 7% faster on SmolLM2 (3 KV heads for 9 query heads). The switch is transformers' own
    environment variable, read at every attention call; other versions ignore it."""
    if device.type != "cpu" or os.environ.get(FORCE_GQA) is not None:
        yield
        return
    os.environ[FORCE_GQA] = "1"
    try:
        yield
    finally:
        del os.environ[FORCE_GQA]
