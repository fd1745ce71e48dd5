"""The significance scorer: P(keep) from a token-classification model, on the scorer's tokens.

SPEC "scores": `significance[t]` is P(keep) from a token-classification checkpoint (the
LLMLingua-2 kind: XLM-RoBERTa or BERT with the labels drop/keep), mapped from its words onto the
scorer model's CoT tokens. As in LLMLingua-2:

- the CoT is split into whitespace-separated words, the words are fed to the classifier
  (`is_split_into_words`), in chunks that fit its context, and a word's P(keep) is the mean over
  its sub-word pieces;
- the "keep" label is the one named keep/preserve in `id2label`, else label 1 of a two-label
  head (LLMLingua-2 checkpoints name their labels LABEL_0/LABEL_1 and keep is 1).

Mapping onto the scorer's tokens goes by character offsets: every character of the CoT belongs to
a word (whitespace to the word after it, trailing whitespace to the last word), and a token's
score is the mean over its characters of their words' P(keep). Words the classifier tokenizer
turns into no pieces get 0. A CoT without words scores 0 everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch

from cotprune.errors import InputError

_WORD = re.compile(r"\S+")
KEEP_NAMES = ("keep", "preserve", "label_keep")
BATCH_CHUNKS = 16  # classifier inputs per forward


# --- pure mapping ------------------------------------------------------------------------------

def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the whitespace-separated words of `text`."""
    return [m.span() for m in _WORD.finditer(text)]


def char_owners(text_len: int, words: Sequence[tuple[int, int]]) -> list[int]:
    """For each character, the index of the word it belongs to (whitespace joins the next word)."""
    owners = [0] * text_len
    w = 0
    for c in range(text_len):
        while w < len(words) - 1 and c >= words[w][1]:
            w += 1
        owners[c] = w
    return owners


def map_words_to_tokens(text_len: int, words: Sequence[tuple[int, int]],
                        word_scores: Sequence[float],
                        token_spans: Sequence[tuple[int, int]]) -> list[float]:
    """Each token's mean, over its characters, of their words' scores (see the module doc)."""
    if not words:
        return [0.0] * len(token_spans)
    owners = char_owners(text_len, words)
    out = []
    for start, end in token_spans:
        start = min(max(start, 0), max(text_len - 1, 0))
        end = min(max(end, start + 1), text_len) if text_len else 0
        chars = range(start, end) if end > start else range(start, start + 1)
        vals = [word_scores[owners[c]] for c in chars if c < text_len]
        out.append(sum(vals) / len(vals) if vals else 0.0)
    return out


def token_char_spans(tokenizer, text: str, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Character spans of `ids` (= tokenize(text)) in `text`.

    Offsets from a fast tokenizer when its encoding reproduces `ids`; otherwise the lengths of
    decoded prefixes (exact for byte-level BPE, as layout.decode is).
    """
    ids = list(ids)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == ids:
            return [tuple(o) for o in enc["offset_mapping"]]
    from cotprune.data.layout import decode

    spans, prev = [], 0
    for i in range(len(ids)):
        cur = min(len(decode(tokenizer, ids[:i + 1])), len(text))
        spans.append((prev, cur))
        prev = cur
    return spans


def chunk_words(pieces_per_word: Sequence[int], max_pieces: int) -> list[range]:
    """Consecutive word ranges whose piece counts sum to at most `max_pieces` (>= 1 word each)."""
    chunks, start, used = [], 0, 0
    for w, n in enumerate(pieces_per_word):
        if w > start and used + n > max_pieces:
            chunks.append(range(start, w))
            start, used = w, 0
        used += n
    if start < len(pieces_per_word):
        chunks.append(range(start, len(pieces_per_word)))
    return chunks


def keep_label_index(id2label: dict) -> int:
    """The label id meaning "keep" (named keep/preserve, else 1 of a two-label head)."""
    labels = {int(k): str(v).lower() for k, v in id2label.items()}
    for i, name in labels.items():
        if name in KEEP_NAMES:
            return i
    if len(labels) == 2:
        return 1
    names = sorted(labels.values())
    raise InputError(f"--significance-model: cannot tell which of the labels {names}"
                     " means keep (expected one named 'keep', or two labels with keep = 1)")


# --- the classifier ------------------------------------------------------------------------------

class SignificanceModel:
    """A token-classification checkpoint that gives each word of a text its P(keep)."""

    def __init__(self, path: str, device, *, trust_remote_code: bool = False,
                 max_pieces: int | None = None):
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        if not Path(path).expanduser().exists() and (path.startswith((".", "/", "~"))
                                                     or path.count("/") > 1):
            raise InputError("--significance-model: directory does not exist", file=path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForTokenClassification.from_pretrained(
                path, trust_remote_code=trust_remote_code).to(device).eval()
        except (OSError, ValueError) as e:
            raise InputError(f"--significance-model: could not load it: {e}", file=path) from None
        self.keep = keep_label_index(self.model.config.id2label)
        context = min(int(getattr(self.model.config, "max_position_embeddings", 512) or 512),
                      int(self.tokenizer.model_max_length or 512))
        specials = self.tokenizer.num_special_tokens_to_add(pair=False)
        self.max_pieces = max_pieces or max(1, context - specials)
        self.device = device

    def _pieces_per_word(self, words: list[str]) -> list[int]:
        enc = self.tokenizer(words, is_split_into_words=True, add_special_tokens=False)
        counts = [0] * len(words)
        for w in enc.word_ids():
            if w is not None:
                counts[w] += 1
        return counts

    @torch.no_grad()
    def _chunk_probs(self, chunks: list[list[str]]) -> list[list[float]]:
        """Word-level P(keep) for each chunk of words (mean over each word's pieces)."""
        out: list[list[float]] = []
        for start in range(0, len(chunks), BATCH_CHUNKS):
            group = chunks[start:start + BATCH_CHUNKS]
            enc = self.tokenizer(group, is_split_into_words=True, padding=True, truncation=True,
                                 max_length=self.max_pieces + 2, return_tensors="pt")
            logits = self.model(input_ids=enc["input_ids"].to(self.device),
                                attention_mask=enc["attention_mask"].to(self.device)).logits
            probs = torch.softmax(logits.float(), dim=-1)[..., self.keep].cpu()
            for r, words in enumerate(group):
                sums, counts = [0.0] * len(words), [0] * len(words)
                for pos, w in enumerate(enc.word_ids(r)):
                    if w is not None:
                        sums[w] += float(probs[r, pos])
                        counts[w] += 1
                out.append([s / c if c else 0.0 for s, c in zip(sums, counts, strict=True)])
        return out

    def word_probs(self, texts: Sequence[str]) -> list[list[float]]:
        """P(keep) of every word (see `word_spans`) of every text."""
        chunks, owner = [], []
        for i, text in enumerate(texts):
            words = [text[s:e] for s, e in word_spans(text)]
            for r in chunk_words(self._pieces_per_word(words), self.max_pieces) if words else []:
                chunks.append(words[r.start:r.stop])
                owner.append(i)
        probs = self._chunk_probs(chunks) if chunks else []
        out: list[list[float]] = [[] for _ in texts]
        for i, p in zip(owner, probs, strict=True):
            out[i].extend(p)
        return out

    def token_scores(self, scorer_tokenizer, cots: Sequence[str],
                     cot_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """P(keep) mapped onto the scorer model's CoT tokens, one list per chain."""
        out = []
        for cot, ids, probs in zip(cots, cot_ids, self.word_probs(cots), strict=True):
            spans = token_char_spans(scorer_tokenizer, cot, ids)
            out.append(map_words_to_tokens(len(cot), word_spans(cot), probs, spans))
        return out
