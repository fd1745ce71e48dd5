"""How a chain is laid out as one token sequence for a model (SPEC "token layout").

    [prompt: question in the chat template, up to the assistant turn] [CoT] [answer + end of turn]

Each of the three segments is tokenised on its own and the ids are concatenated. That is what
makes the CoT span exactly `tokenize(cot)`: a BPE merge can never straddle the prompt/CoT or the
CoT/answer boundary, so decode(CoT span) == CoT text and deleting CoT tokens never changes how the
prompt or the answer are tokenised. `score`, `prune`, `distill` and `eval` all lay chains out
through `ChainLayout`, so the same chain gives the same ids everywhere.

The answer segment is `ANSWER_PREFIX + answer` followed by the tokens that close the assistant
turn (from the chat template, or EOS without one); all of it belongs to the answer span.
"""

from __future__ import annotations

from dataclasses import dataclass

ANSWER_PREFIX = "\nThe answer is "
PLAIN_PROMPT = "Question: {question}\nAnswer:\n"  # for tokenizers without a chat template
_PROBE = "\x00COTPRUNE\x00"  # a marker to find where the template puts the assistant content


@dataclass(frozen=True)
class Layout:
    """One laid-out chain: the ids and the half-open spans of the CoT and the answer."""

    input_ids: list[int]
    cot_start: int
    cot_end: int
    answer_start: int
    answer_end: int

    @property
    def cot_ids(self) -> list[int]:
        return self.input_ids[self.cot_start:self.cot_end]

    def as_columns(self) -> dict:
        return {
            "input_ids": self.input_ids,
            "cot_start": self.cot_start,
            "cot_end": self.cot_end,
            "answer_start": self.answer_start,
            "answer_end": self.answer_end,
        }


class ChainLayout:
    """Lays chains out for one tokenizer (chat template when it has one, else `PLAIN_PROMPT`)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.end_of_turn = self._end_of_turn_text()

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _end_of_turn_text(self) -> str:
        if not self.has_template:
            return self.tokenizer.eos_token or ""
        prompt = self.prompt_text("q")
        full = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": _PROBE}],
            tokenize=False)
        at = full.find(_PROBE)
        if at < 0 or not full.startswith(prompt):
            # A template that rewrites the assistant turn: fall back to EOS, still consistent.
            return self.tokenizer.eos_token or ""
        return full[at + len(_PROBE):]

    def prompt_text(self, question: str) -> str:
        if not self.has_template:
            return PLAIN_PROMPT.format(question=question)
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, question: str) -> list[int]:
        ids = self._encode(self.prompt_text(question))
        bos = self.tokenizer.bos_token_id
        if not self.has_template and bos is not None and (not ids or ids[0] != bos) \
                and getattr(self.tokenizer, "add_bos_token", False):
            ids = [bos, *ids]
        return ids

    def cot_ids(self, cot: str) -> list[int]:
        return self._encode(cot)

    def answer_ids(self, answer: str) -> list[int]:
        return self._encode(ANSWER_PREFIX + answer + self.end_of_turn)

    def layout(self, question: str, cot: str, answer: str) -> Layout:
        return join_segments(self.prompt_ids(question), self.cot_ids(cot), self.answer_ids(answer))


def join_segments(prompt_ids: list[int], cot_ids: list[int], answer_ids: list[int]) -> Layout:
    """A layout from already tokenised segments (prune uses this with the kept CoT ids)."""
    cot_start = len(prompt_ids)
    cot_end = cot_start + len(cot_ids)
    return Layout(
        input_ids=[*prompt_ids, *cot_ids, *answer_ids],
        cot_start=cot_start,
        cot_end=cot_end,
        answer_start=cot_end,
        answer_end=cot_end + len(answer_ids),
    )


def decode(tokenizer, ids: list[int]) -> str:
    """Exact decoding: no clean-up of spaces, so decode(tokenize(s)) == s for byte-level BPE."""
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token's own text (a token that is part of a multi-byte character may be partial)."""
    return [decode(tokenizer, [i]) for i in ids]
