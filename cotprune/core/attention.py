"""Rows of the attention matrix that the attention scorer needs, without an eager model.

SPEC "scores": `attention[t]` is the mean, over all layers, heads and answer-span queries q, of
the softmax attention weight from q to CoT position t. Running the whole model with eager
attention and `output_attentions=True` materialises every layer's full [heads, n, n] matrix; we
need only the few answer rows. So the model runs with its fast attention (SDPA), forward hooks
capture each layer's query and key projections, and, per layer, we redo what the attention
module does for just the rows we need: the model's own rotary embedding (`apply_rotary_pos_emb`
of the module's own source file, called with the same shapes), grouped-query head repetition,
`softmax(q k^T * scaling + causal mask)` in float32.

Besides the scorer, `attention_rows` returns per-layer values that the predictor uses as
features, each [layers, cot_len]:

- `answer`: attention received from answer-span queries (mean over heads and answer queries);
- `later_cot` (when asked for): attention received from later CoT tokens, i.e. for CoT position
  t the mean over heads and over CoT query positions q with t < q < cot_end (0 for the last CoT
  token, which has no later CoT token).

Works for attention modules in the Llama style (`q_proj`, `k_proj`, optional `q_norm`/`k_norm`,
`head_dim`, `num_key_value_groups`, `scaling`, rotary `position_embeddings` passed as a keyword):
Llama, Qwen2/3, Mistral, SmolLM and their kin. Sliding-window layers are honoured.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cotprune.data.layout import Layout
from cotprune.errors import InputError

QUERY_CHUNK = 256  # query rows per softmax block when computing the later-CoT feature


@dataclass
class AttentionRows:
    """Per-layer attention received by each CoT token of one chain ([layers, cot_len], float32)."""

    answer: torch.Tensor
    later_cot: torch.Tensor | None = None

    def answer_mean(self) -> torch.Tensor:
        """The scorer: mean over layers (each layer is already a mean over heads and queries)."""
        return self.answer.mean(0) if self.answer.shape[0] else self.answer.sum(0)


# --- pure math ---------------------------------------------------------------------------------

def repeat_kv_heads(keys: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[kv_heads, n, d] -> [kv_heads * n_rep, n, d], query head h reading kv head h // n_rep."""
    return keys.repeat_interleave(n_rep, dim=0) if n_rep > 1 else keys


def causal_attention_rows(queries: torch.Tensor, keys: torch.Tensor, q_positions: torch.Tensor,
                          scaling: float, sliding_window: int | None = None) -> torch.Tensor:
    """softmax(q k^T * scaling + causal mask) for the given query rows, in float32.

    queries [heads, nq, d] at absolute positions `q_positions` [nq]; keys [heads, nk, d] at
    positions 0..nk-1. Returns [heads, nq, nk]. Key j is visible to query i when j <= pos_i (and
    pos_i - j < sliding_window for sliding-window layers).
    """
    scores = torch.matmul(queries.float(), keys.float().transpose(-1, -2)) * scaling
    k_pos = torch.arange(keys.shape[-2], device=keys.device)
    hidden = k_pos[None, :] > q_positions[:, None]
    if sliding_window is not None:
        hidden |= (q_positions[:, None] - k_pos[None, :]) >= sliding_window
    scores = scores.masked_fill(hidden, float("-inf"))
    return torch.softmax(scores, dim=-1)


def later_query_mean(col_sums: torch.Tensor, n: int) -> torch.Tensor:
    """Mean attention from later queries: `col_sums[t]` summed over q > t, divided by n - 1 - t."""
    counts = torch.arange(n - 1, -1, -1, device=col_sums.device, dtype=col_sums.dtype)
    return torch.where(counts > 0, col_sums / counts.clamp(min=1), torch.zeros_like(col_sums))


# --- one layer, one chain ------------------------------------------------------------------------

def layer_rows(q: torch.Tensor, k: torch.Tensor, layout: Layout, *, scaling: float, n_rep: int,
               sliding_window: int | None, later_cot: bool,
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(answer attention [cot_len], later-CoT attention [cot_len] or None) for one layer.

    q [heads, n, d] and k [kv_heads, n, d] are post-rotary states of one unpadded chain (n may
    include right padding beyond answer_end, which no row here can see).
    """
    cs, ce, as_, ae = layout.cot_start, layout.cot_end, layout.answer_start, layout.answer_end
    keys = repeat_kv_heads(k[:, :ae], n_rep)
    positions = torch.arange(as_, ae, device=q.device)
    probs = causal_attention_rows(q[:, as_:ae], keys, positions, scaling, sliding_window)
    answer = probs[:, :, cs:ce].mean(dim=(0, 1)) if ae > as_ else q.new_zeros(ce - cs).float()
    if not later_cot:
        return answer, None
    col_sums = torch.zeros(ce - cs, dtype=torch.float32, device=q.device)
    for start in range(cs, ce, QUERY_CHUNK):
        end = min(start + QUERY_CHUNK, ce)
        positions = torch.arange(start, end, device=q.device)
        block = causal_attention_rows(q[:, start:end], keys[:, :end], positions, scaling,
                                      sliding_window)[:, :, cs:end]  # [heads, rows, keys cs..end)
        block = block.mean(0)
        rows = torch.arange(end - start, device=q.device)
        block[rows, rows + (start - cs)] = 0.0  # a token's attention to itself is not "later"
        col_sums[:end - cs] += block.sum(0)
    return answer, later_query_mean(col_sums, ce - cs)


# --- hooks -------------------------------------------------------------------------------------

def attention_modules(model) -> list:
    """The self-attention modules of the decoder, in layer order (Llama-style only)."""
    found = [m for m in model.modules() if hasattr(m, "q_proj") and hasattr(m, "k_proj")
             and hasattr(m, "head_dim") and hasattr(m, "num_key_value_groups")]
    if not found:
        raise InputError("the attention scorer needs a Llama-style model (attention modules with "
                         f"q_proj/k_proj and rotary embeddings); {type(model).__name__} has none")
    return sorted(found, key=lambda m: getattr(m, "layer_idx", 0))


def _rotary_function(module):
    fn = getattr(sys.modules[type(module).__module__], "apply_rotary_pos_emb", None)
    if fn is None:
        raise InputError(f"{type(module).__name__}: no apply_rotary_pos_emb beside it; the "
                         "attention scorer supports rotary-embedding models only")
    return fn


class AttentionCapture:
    """Hooks that compute `AttentionRows` for the layouts of each forward pass.

    Use as a context manager around forwards; call `expect(layouts)` before each forward (one
    layout per batch row, right-padded batch) and `take()` after it.
    """

    def __init__(self, model, *, later_cot: bool = False):
        self.modules = attention_modules(model)
        self.later_cot = later_cot
        self._handles: list = []
        self._layouts: Sequence[Layout] = ()
        self._q: torch.Tensor | None = None
        self._k: torch.Tensor | None = None
        self._answer: list[list[torch.Tensor]] = []
        self._later: list[list[torch.Tensor]] = []

    def __enter__(self) -> AttentionCapture:
        for m in self.modules:
            q_src = m.q_norm if getattr(m, "q_norm", None) is not None else m.q_proj
            k_src = m.k_norm if getattr(m, "k_norm", None) is not None else m.k_proj
            self._handles.append(q_src.register_forward_hook(self._keep_q))
            self._handles.append(k_src.register_forward_hook(self._keep_k))
            self._handles.append(m.register_forward_hook(self._layer_done, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def expect(self, layouts: Sequence[Layout]) -> None:
        self._layouts = list(layouts)
        self._answer = [[] for _ in self._layouts]
        self._later = [[] for _ in self._layouts]

    def take(self) -> list[AttentionRows]:
        out = []
        for ans, later in zip(self._answer, self._later, strict=True):
            out.append(AttentionRows(
                answer=torch.stack(ans) if ans else torch.zeros(0, 0),
                later_cot=torch.stack(later) if later else None))
        self.expect(())
        return out

    def _keep_q(self, module, args, output) -> None:
        self._q = output

    def _keep_k(self, module, args, output) -> None:
        self._k = output

    def _layer_done(self, module, args, kwargs, output) -> None:
        if not self._layouts:
            return
        if self._q is None or self._k is None:
            raise RuntimeError("attention capture saw no query/key projections for a layer")
        cos, sin = kwargs["position_embeddings"]
        batch, width = self._q.shape[0], self._q.shape[1]
        q = self._q.reshape(batch, width, -1, module.head_dim).transpose(1, 2)
        k = self._k.reshape(batch, width, -1, module.head_dim).transpose(1, 2)
        q, k = _rotary_function(module)(q, k, cos, sin)
        self._q = self._k = None
        for r, layout in enumerate(self._layouts):
            answer, later = layer_rows(
                q[r], k[r], layout, scaling=module.scaling, n_rep=module.num_key_value_groups,
                sliding_window=getattr(module, "sliding_window", None), later_cot=self.later_cot)
            self._answer[r].append(answer)
            if later is not None:
                self._later[r].append(later)


@torch.no_grad()
def attention_rows(model, layouts: Sequence[Layout], pad_id: int, *,
                   later_cot: bool = False) -> list[AttentionRows]:
    """`AttentionRows` for each layout, from one SDPA forward of the batch."""
    from cotprune.core.engine import forward_hidden

    with AttentionCapture(model, later_cot=later_cot) as capture:
        capture.expect(layouts)
        forward_hidden(model, [x.input_ids for x in layouts], pad_id)
        return capture.take()
