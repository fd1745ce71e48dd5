"""Bingo's token significance inside the RL loop: one score per response token.

`--significance` picks the scorer; the same scorer marks the sampled responses and the frozen
initial policy's reference response, and `rewards.significance_counts` (min-max per response,
tau) turns its scores into (N_low, N_high). Higher score = more significant for every kind:

- `surprisal`: -log p(token | prefix) under the model that scores (the policy for samples, the
  frozen initial policy for the reference).
- `attention`: the attention a response token receives from the LATER response tokens, mean over
  layers, heads and those query positions (0 for the last token, which has none). This is the
  `later_cot` row of `attention.AttentionCapture` with the whole response as the "CoT" span, so
  it runs on the model's SDPA path (no eager attention). Same models as surprisal.
- `predictor` (`--predictor PATH`): a `cotprune predictor fit` artifact. The response is split into
  CoT and answer at the answer marker (`sampling.split_response`, on token boundaries); the
  predictor's features (`predictor.chain_features`) of prompt + CoT + answer give each CoT token a
  predicted deletion rank, higher = deleted later = more important, used as its significance. Answer
  tokens and the stop token, which pruning never deletes, get the highest CoT score. Without a
  marker the whole response is CoT and the answer span the predictor sees is the layout's canonical
  one for the graded answer. Features come from the frozen initial policy for both samples and
  reference: the artifact is bound to the pruner model it was fitted on, which is why it is refused
  (exit 2) when `--model` names another one.
- `model` (`--significance-model PATH`): a token-classification checkpoint (LLMLingua-2 kind)
  through `significance_model.SignificanceModel.token_scores`: P(keep) of each word of the response
  text mapped onto the response tokens; the stop token gets the highest score of the response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cotprune.errors import InputError
from cotprune.rl.rewards import significance_counts

KINDS = ("surprisal", "attention", "predictor", "model")
NEEDS_PATH = ("predictor", "model")
PATH_FLAGS = {"predictor": "--predictor", "model": "--significance-model"}  # where PATH comes from


@dataclass(frozen=True)
class SignificanceSpec:
    """A parsed `--significance` value."""

    kind: str
    path: str | None = None


def parse_significance(spec: str) -> SignificanceSpec:
    """`surprisal`, `attention`, `predictor:PATH` or `model:PATH`; anything else is an InputError.

    The command line gives the PATH as `--predictor PATH` or `--significance-model PATH`
    (`cli.rl.significance_spec` joins them), so the messages name those flags.
    Runs at option-parse time, before any model loads. A predictor PATH must be an existing
    file; a model PATH that looks local must exist (a hub id is checked when it loads).
    """
    kind, sep, path = spec.partition(":")
    if kind not in KINDS:
        raise InputError(f"--significance must be one of {', '.join(KINDS)}, got {spec!r}")
    if kind not in NEEDS_PATH:
        if sep:
            raise InputError(f"--significance {kind} takes no PATH, got {spec!r}")
        return SignificanceSpec(kind)
    flag = PATH_FLAGS[kind]
    if not path:
        raise InputError(f"--significance {kind} needs {flag} PATH")
    local = Path(path).expanduser()
    if kind == "predictor" and not local.is_file():
        raise InputError(f"{flag}: no such predictor file", file=path)
    if kind == "model" and not local.exists() and (path.startswith((".", "/", "~"))
                                                   or path.count("/") > 1):
        raise InputError(f"{flag}: directory does not exist", file=path)
    return SignificanceSpec(kind, path)


# --- splitting a response (pure but for the tokenizer) ------------------------------------------

def strip_stop(response_ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """The response without its final stop token (a truncated response has none)."""
    ids = list(response_ids)
    return ids[:-1] if ids and ids[-1] in set(stop_ids) else ids


def decoded_length(tokenizer, ids: Sequence[int]) -> int:
    return len(tokenizer.decode(list(ids), skip_special_tokens=True,
                                clean_up_tokenization_spaces=False))


def cot_token_count(tokenizer, content: Sequence[int], cot_chars: int) -> int:
    """The most leading tokens whose text fits in the first `cot_chars` characters.

    Binary search over decoded-prefix lengths (non-decreasing in the prefix); a token that
    straddles the boundary goes to the answer side.
    """
    lo, hi = 0, len(content)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if decoded_length(tokenizer, content[:mid]) <= cot_chars:
            lo = mid
        else:
            hi = mid - 1
    return lo


def split_tokens(tokenizer, chain_layout, response: Sequence[int],
                 stop_ids: Sequence[int]) -> tuple[int, list[int]]:
    """(k, answer ids): the first k response tokens are CoT, `answer ids` the answer segment.

    With an answer marker the answer segment is the response's own tokens from k on (its stop
    token included, as a layout's answer ends in the end of turn); without one k is the whole
    content and the segment is the layout's canonical answer for the graded answer (the
    predictor was fitted on chains that end in one).
    """
    content = strip_stop(response, stop_ids)
    from cotprune.data.layout import ANSWER_PREFIX
    from cotprune.training.sampling import response_answer, split_response

    text = tokenizer.decode(list(content), skip_special_tokens=True,
                            clean_up_tokenization_spaces=False)
    cot_text, _ = split_response(text)
    if any(m in text for m in (ANSWER_PREFIX, ANSWER_PREFIX.lstrip())) \
            and len(cot_text) < len(text.rstrip()):
        k = cot_token_count(tokenizer, content, len(cot_text))
        return k, list(response[k:])
    return len(content), chain_layout.answer_ids(response_answer(text) or "")


def pad_with_top(scores: Sequence[float], total: int) -> list[float]:
    """`scores` followed by their maximum (0 when empty) up to `total` entries."""
    top = max(scores) if len(scores) else 0.0
    return [float(s) for s in scores] + [top] * (total - len(scores))


# --- the scorer ----------------------------------------------------------------------------------

class ResponseSignificance:
    """Scores response tokens with one `--significance` scorer (see the module doc).

    Build it before the policy loads (a predictor artifact is read and checked against the
    pruner model here), then `bind` it to the loaded policy's tokenizer and device.
    """

    def __init__(self, spec: SignificanceSpec, model_name: str, *,
                 trust_remote_code: bool = False):
        from cotprune.pruning.predictor import load_predictor

        self.spec = spec
        self.trust_remote_code = trust_remote_code
        self.predictor = load_predictor(spec.path, model_name) if spec.kind == "predictor" \
            else None
        self.classifier = None
        self.tokenizer = self.layout = None
        self.stop_ids: list[int] = []
        self.batch_tokens = 8192

    @property
    def frozen_only(self) -> bool:
        """True when samples are scored with the frozen initial policy too (the predictor)."""
        return self.spec.kind == "predictor"

    def bind(self, model, tokenizer, stop_ids: Sequence[int], *, batch_tokens: int) -> None:
        from cotprune.data.layout import ChainLayout

        self.tokenizer, self.layout = tokenizer, ChainLayout(tokenizer)
        self.stop_ids, self.batch_tokens = list(stop_ids), batch_tokens
        if self.predictor is not None:
            self.predictor.check_model(model)
        if self.spec.kind == "attention":
            from cotprune.core.attention import attention_modules

            attention_modules(model)  # refuse a model the attention scorer cannot read, now
        if self.spec.kind == "model":
            from cotprune.scoring.significance_model import SignificanceModel

            device = next(model.parameters()).device
            self.classifier = SignificanceModel(self.spec.path, device,
                                                trust_remote_code=self.trust_remote_code)

    def scores(self, model, prompts: Sequence[Sequence[int]],
               responses: Sequence[Sequence[int]]) -> list[list[float]]:
        """One significance score per token of each response."""
        kind = self.spec.kind
        if kind == "surprisal":
            return self._surprisal(model, prompts, responses)
        if kind == "attention":
            return self._attention(model, prompts, responses)
        if kind == "predictor":
            return self._predictor(model, prompts, responses)
        return self._classifier(responses)

    def counts(self, model, prompts, responses, tau: float) -> list[tuple[int, int]]:
        """(N_low, N_high) of each response."""
        return [significance_counts(s, tau) for s in self.scores(model, prompts, responses)]

    # --- kinds ---------------------------------------------------------------------------------

    def _surprisal(self, model, prompts, responses) -> list[list[float]]:
        from cotprune.rl.update import batched_logprobs

        lps, _ = batched_logprobs(model, list(prompts), [list(r) for r in responses],
                                  batch_tokens=self.batch_tokens)
        return [(-lp).tolist() for lp in lps]

    def _attention(self, model, prompts, responses) -> list[list[float]]:
        return response_attention(model, prompts, responses, self._pad_id(),
                                  batch_tokens=self.batch_tokens)

    def _predictor(self, model, prompts, responses) -> list[list[float]]:
        from cotprune.data.layout import join_segments
        from cotprune.pruning.predictor import chain_features

        layouts = []
        for prompt, response in zip(prompts, responses, strict=True):
            k, answer = split_tokens(self.tokenizer, self.layout, response, self.stop_ids)
            layouts.append(join_segments(list(prompt), list(response[:k]), answer))
        feats = chain_features(model, self.tokenizer, layouts, batch_tokens=self.batch_tokens)
        cot_scores = self.predictor.scores(feats)
        return [pad_with_top(s, len(r)) for s, r in zip(cot_scores, responses, strict=True)]

    def _classifier(self, responses) -> list[list[float]]:
        from cotprune.data.layout import decode

        contents = [strip_stop(r, self.stop_ids) for r in responses]
        texts = [decode(self.tokenizer, c) for c in contents]
        scored = self.classifier.token_scores(self.tokenizer, texts, contents)
        return [pad_with_top(s, len(r)) for s, r in zip(scored, responses, strict=True)]

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else int(self.stop_ids[0])


def response_attention(model, prompts: Sequence[Sequence[int]],
                       responses: Sequence[Sequence[int]], pad_id: int, *,
                       batch_tokens: int = 8192) -> list[list[float]]:
    """Attention each response token receives from later response tokens (see the module doc)."""
    from cotprune.core.attention import attention_rows
    from cotprune.core.engine import plan_batches
    from cotprune.data.layout import join_segments

    layouts = [join_segments(list(p), list(r), []) for p, r in zip(prompts, responses,
                                                                    strict=True)]
    out: list[list[float]] = [[] for _ in layouts]
    todo = [i for i, r in enumerate(responses) if len(r)]
    for batch in plan_batches([len(layouts[i].input_ids) for i in todo], batch_tokens):
        rows = attention_rows(model, [layouts[todo[b]] for b in batch], pad_id, later_cot=True)
        for b, row in zip(batch, rows, strict=True):
            out[todo[b]] = row.later_cot.float().mean(0).tolist()
    return out


@torch.no_grad()
def score_counts(scorer: ResponseSignificance, model, prompts, responses,
                 tau: float) -> list[tuple[int, int]]:
    """`scorer.counts` without gradients (the policy is in train mode during RL)."""
    return scorer.counts(model, prompts, responses, tau)
