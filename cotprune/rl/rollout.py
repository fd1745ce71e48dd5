"""Sampling the group responses and grading them (Bingo's significance: `rl.significance`).

Generation is HF `generate` with the policy in eval mode and a KV cache, left-padded batches
(`sampling.pad_left`), stopping at EOS or end of turn (`sampling.stop_token_ids`). The
trained response keeps its stop token (the model must learn to stop); a response without one is
truncated. Grading is the `eval` grader (`sampling.response_answer` + `grading.is_correct`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cotprune.training.grading import is_correct
from cotprune.training.sampling import finish_response, pad_left, response_answer


@dataclass
class Rollout:
    """One sampled response of one prompt."""

    prompt_index: int
    slot: int
    prompt_ids: list[int]
    response_ids: list[int]  # what is trained on: content plus the stop token when it stopped
    text: str
    truncated: bool
    correct: bool = False

    @property
    def length(self) -> int:
        return len(self.response_ids)


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                     temperature: float, stop_ids: Sequence[int], batch_size: int,
                     greedy: bool = False) -> list[tuple[list[int], bool]]:
    """(trained response ids, truncated) for each prompt (repeat a prompt to sample it G times)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    out: list[tuple[list[int], bool]] = []
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=list(stop_ids), pad_token_id=pad_id,
                  use_cache=True)
    if greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            ids, mask = pad_left(chunk, pad_id)
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 **kwargs)
            for row in gen[:, ids.shape[1]:].tolist():
                content, count, truncated = finish_response(row, stop_ids, max_new_tokens, pad_id)
                out.append((row[:count] if not truncated else content, truncated))
    finally:
        model.train(was_training)
    return out


def grade(tokenizer, response_ids: Sequence[int], reference: str | None) -> tuple[str, bool]:
    """(decoded text, correct) of one response."""
    text = tokenizer.decode(list(response_ids), skip_special_tokens=True,
                            clean_up_tokenization_spaces=False)
    return text, bool(reference is not None and is_correct(response_answer(text), reference))
