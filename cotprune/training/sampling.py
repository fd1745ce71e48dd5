"""Batched sampling (`decode`, a KV-cache loop; `hf_generate` is its reference), and turning
responses back into chains.

Prompts are laid out by `layout.ChainLayout.prompt_ids`, the same ids a chain's prompt has in
training, so a student is asked exactly the way it was taught. Batches are left-padded (so every
row's new tokens start at the same column) and stop at end of turn: EOS or the first token of the
chat template's end-of-turn text. A response that reaches `max_new_tokens` without stopping is
marked `truncated`; it is never silently treated as a finished answer.

A response is split into CoT and answer at the last answer marker (`layout.ANSWER_PREFIX`,
"\\nThe answer is ", by default), else at the last `\\boxed{}`; without either, the whole text is
CoT and the answer is unknown.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

from cotprune.data.layout import ANSWER_PREFIX, ChainLayout
from cotprune.errors import InputError
from cotprune.training.grading import extract_answer, last_boxed

RATIO_TEMPLATE = "\n<keep ratio {ratio}>"  # TokenSkip: the requested ratio follows the question


def format_ratio(ratio: float) -> str:
    """A keep ratio as written into prompts: at most 3 decimals, no trailing zeros (0.5, 1)."""
    return f"{round(float(ratio), 3):g}"


def ratio_question(question: str, ratio: float | None) -> str:
    """The question a ratio-conditioned student sees: the keep ratio is appended to it."""
    if ratio is None:
        return question
    return question + RATIO_TEMPLATE.format(ratio=format_ratio(ratio))


@dataclass
class SamplingOptions:
    """How to sample; temperature 0 means greedy decoding. Validation names the flag."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    samples: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError("--max-new-tokens must be at least 1")
        if self.temperature < 0:
            raise InputError("--temperature must be >= 0 (0 is greedy)")
        if not 0 < self.top_p <= 1:
            raise InputError("--top-p must be in (0, 1]")
        if self.samples < 1:
            raise InputError("--samples must be at least 1")
        if self.samples > 1 and self.temperature == 0:
            raise InputError("--samples > 1 needs --temperature > 0 (greedy samples are equal)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Response:
    """One generated response: text (special tokens removed), its token count, and truncation."""

    text: str
    generated_tokens: int
    truncated: bool


def stop_token_ids(tokenizer, chain_layout: ChainLayout) -> list[int]:
    """EOS plus the first token of the end-of-turn text (e.g. `<|im_end|>`)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    end = chain_layout.end_of_turn.strip()
    if end:
        end_ids = tokenizer(end, add_special_tokens=False)["input_ids"]
        if end_ids:
            ids.add(int(end_ids[0]))
    if not ids:
        raise InputError("the tokenizer has neither an EOS token nor an end-of-turn marker")
    return sorted(ids)


def too_long(prompt_lengths: Sequence[int], max_new_tokens: int, model) -> list[int]:
    """Indices of the prompts that leave no room for `max_new_tokens` in the model's context
    (its config's max_position_embeddings; none when the config does not say): generating past
    the context gives garbage or fails, so these are skipped and counted instead."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not context:
        return []
    return [i for i, n in enumerate(prompt_lengths) if n + max_new_tokens > context]


def finish_response(new_ids: Sequence[int], stop_ids: Sequence[int], max_new_tokens: int,
                    pad_id: int | None = None) -> tuple[list[int], int, bool]:
    """(content ids before the stop token, generated token count, truncated) of one row.

    The count includes the stop token, as it is a token the model had to generate. Without a
    stop token the row is truncated when it used the whole budget; trailing pads (rows that
    finished early are padded to the batch's width) are not counted.
    """
    ids = list(new_ids)
    stops = set(stop_ids)
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i], i + 1, False
    if pad_id is not None:
        while ids and ids[-1] == pad_id and pad_id not in stops:
            ids.pop()
    return ids, len(ids), len(ids) >= max_new_tokens


def split_response(text: str, marker: str = ANSWER_PREFIX) -> tuple[str, str | None]:
    """(cot, answer) of a response; answer None when the response states none.

    The marker is matched at its last occurrence, also without its leading newline (models
    often write "... so x = 5. The answer is 5"). Without the marker a `\\boxed{}` answer is
    taken and the CoT is the whole text.
    """
    for needle in dict.fromkeys([marker, marker.lstrip()]):
        if needle and needle in text:
            at = text.rfind(needle)
            answer = text[at + len(needle):].strip()
            answer = answer.splitlines()[0].strip() if answer else ""
            return text[:at].rstrip(), (answer.rstrip(".").strip() or None)
    boxed = last_boxed(text)
    if boxed:
        return text.rstrip(), boxed
    return text.rstrip(), None


def response_answer(text: str, marker: str = ANSWER_PREFIX) -> str | None:
    """The final answer a response states, for grading (the marker first, then the grader's)."""
    _, answer = split_response(text, marker)
    return answer if answer is not None else extract_answer(text)


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int):
    """(input_ids, attention_mask) left-padded, so new tokens start at the same column."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            ids[r, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[r, width - len(s):] = 1
    return ids, mask


def next_tokens(logits, opts: SamplingOptions, generator):
    """The next token of each row from its last logits: argmax, or a temperature / top-p draw.

    Top-p keeps the smallest set of likeliest tokens whose probability reaches `top_p` (the
    token that crosses it included), as Hugging Face's warper does.
    """
    import torch

    if opts.greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / opts.temperature, dim=-1)
    if opts.top_p < 1:
        sorted_p, order = probs.sort(-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the likelier tokens
        sorted_p = sorted_p.masked_fill(before >= opts.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def decode(model, prompts: Sequence[Sequence[int]], opts: SamplingOptions,
           stop_ids: Sequence[int], pad_id: int, *, seed: int | None = None) -> list[list[int]]:
    """New token ids of every (prompt, sample) row, prompt-major, each ending at its stop token.

    A plain incremental decoding loop over a KV cache, for speed on small batches: a row that
    has stopped leaves the batch (its cache rows are dropped), so a batch costs its rows' own
    lengths rather than rows x the longest; only the last position is projected onto the
    vocabulary. Greedy decoding gives Hugging Face `generate`'s tokens (tested).
    """
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    rows = [p for p in prompts for _ in range(opts.samples)]
    ids, mask = pad_left(rows, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    generator = None
    if not opts.greedy:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else seed)
    stops = torch.tensor(sorted(set(stop_ids)), device=device)
    out: list[list[int]] = [[] for _ in rows]
    alive = torch.arange(len(rows), device=device)  # original row of each batch row
    cache = DynamicCache()
    # transformers 5.x renamed `past_key_values` to `cache` (the old name still works, with a
    # warning); a wrapper whose forward takes **kwargs gets the old name.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"
    step_ids, positions = ids, (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        for step in range(opts.max_new_tokens):
            logits = model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                           use_cache=True, logits_to_keep=1, **{cache_arg: cache}).logits
            token = next_tokens(logits[:, -1], opts, generator)
            for r, t in zip(alive.tolist(), token.tolist(), strict=True):
                out[r].append(t)
            going = ~torch.isin(token, stops)
            if step + 1 == opts.max_new_tokens or not bool(going.any()):
                break
            if not bool(going.all()):
                keep = going.nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                alive, token, mask, positions = alive[keep], token[keep], mask[keep], \
                    positions[keep]
            mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=-1)
            positions = positions[:, -1:] + 1
            step_ids = token[:, None]
    return out


def generate_batch(model, tokenizer, prompts: Sequence[Sequence[int]], opts: SamplingOptions,
                   stop_ids: Sequence[int], *, seed: int | None = None) -> list[list[Response]]:
    """`opts.samples` responses for each prompt of one batch."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    new = decode(model, prompts, opts, stop_ids, pad_id, seed=seed)
    responses: list[list[Response]] = []
    for p in range(len(prompts)):
        group = []
        for s in range(opts.samples):
            content, count, truncated = finish_response(
                new[p * opts.samples + s], stop_ids, opts.max_new_tokens, pad_id)
            text = tokenizer.decode(content, skip_special_tokens=True,
                                    clean_up_tokenization_spaces=False)
            group.append(Response(text, count, truncated))
        responses.append(group)
    return responses


def hf_generate(model, prompts: Sequence[Sequence[int]], opts: SamplingOptions,
                stop_ids: Sequence[int], pad_id: int) -> list[list[int]]:
    """The same rows through Hugging Face `generate`: the reference `decode` is tested and
    benchmarked against (new ids, padded to the batch's width)."""
    import torch

    device = next(model.parameters()).device
    ids, mask = pad_left(prompts, pad_id)
    kwargs = dict(max_new_tokens=opts.max_new_tokens, eos_token_id=list(stop_ids),
                  pad_token_id=pad_id, num_return_sequences=opts.samples)
    if opts.greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=opts.temperature, top_p=opts.top_p, top_k=0)
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
    return out[:, ids.shape[1]:].tolist()


def plan_generation_batches(prompt_lengths: Sequence[int], opts: SamplingOptions,
                            batch_tokens: int) -> list[list[int]]:
    """Row batches whose (rows x samples x (longest prompt + max_new_tokens)) fits the budget.

    Rows keep their input order inside the plan (sorted by length only within a batch's reach
    would change which rows share a batch between runs); the plan depends only on the rows, so
    a resumed run forms the same batches and, seeded per batch, draws the same samples.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(prompt_lengths):
        width = max(longest, n) + opts.max_new_tokens
        if current and (len(current) + 1) * opts.samples * width > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches
