"""Significance: P(keep) of a token-classification model mapped onto the scorer's CoT tokens."""

from itertools import pairwise

import pyarrow.parquet as pq
import pytest
import torch
from conftest import run_cli, summary_of

from cotprune.errors import InputError
from cotprune.scoring.significance_model import (
    SignificanceModel,
    char_owners,
    chunk_words,
    keep_label_index,
    map_words_to_tokens,
    token_char_spans,
    word_spans,
)

WORDS = ["first", "we", "add", "the", "numbers", "then", "total", "is", "so", "answer", "step",
         "one", "two", "three", "plus", "times", "what"]
PIECES = ["##s", "##ing", "##ed", "##er", "1", "2", "3", "4", "5", "6", "7", "8", "9", "0", ".",
          ",", "+", "=", "?", "!", "a", "b", "c", "d", "e", "##a", "##b", "##c", "##d", "##e"]


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A random 2-layer BERT token classifier (labels drop/keep) with a word-piece vocab."""
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-significance")
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *PIECES]))
    tok = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                        num_labels=2, id2label={0: "drop", 1: "keep"},
                        label2id={"drop": 0, "keep": 1})
    model = BertForTokenClassification(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def reference_word_probs(path, text):
    """Whole text in one classifier call; a word's P(keep) = mean over its pieces."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForTokenClassification.from_pretrained(path).eval()
    words = text.split()
    enc = tok(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**enc).logits[0].double(), -1)[:, 1]
    out = []
    for w in range(len(words)):
        ps = [float(probs[i]) for i, wid in enumerate(enc.word_ids()) if wid == w]
        out.append(sum(ps) / len(ps))
    return out


def reference_token_scores(text, word_probs, spans):
    """Brute force: char -> word by scanning forward to the next word end."""
    ends = [e for _, e in word_spans(text)]
    out = []
    for s, e in spans:
        vals = []
        for c in range(s, max(e, s + 1)):
            w = next((i for i, end in enumerate(ends) if c < end), len(ends) - 1)
            vals.append(word_probs[w])
        out.append(sum(vals) / len(vals))
    return out


def test_word_probs_match_a_single_unchunked_call(tiny_classifier):
    sig = SignificanceModel(str(tiny_classifier), torch.device("cpu"))
    texts = ["First we add the numbers: 12 + 35 = 47.", "So the answer is 47!\n\nWhat then?"]
    got = sig.word_probs(texts)
    for text, probs in zip(texts, got, strict=True):
        ref = reference_word_probs(tiny_classifier, text)
        assert probs == pytest.approx(ref, abs=1e-6)
        assert max(probs) - min(probs) > 1e-3


def test_chunking_covers_every_word(tiny_classifier):
    sig = SignificanceModel(str(tiny_classifier), torch.device("cpu"), max_pieces=5)
    text = " ".join(["numbers add 12345 then"] * 6)
    probs = sig.word_probs([text])[0]
    assert len(probs) == len(text.split()) and all(0 < p < 1 for p in probs)
    assert chunk_words([2, 3, 1, 4, 9, 1], 5) == [range(0, 2), range(2, 4), range(4, 5),
                                                  range(5, 6)]


def test_token_scores_follow_character_offsets(tiny_classifier, gpt2_tokenizer, qwen_tokenizer):
    sig = SignificanceModel(str(tiny_classifier), torch.device("cpu"))
    text = "First we add  the numbers: 12+35 = 47.\nSo the answer is 47. "
    probs = sig.word_probs([text])[0]
    for tok in (gpt2_tokenizer, qwen_tokenizer):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        spans = token_char_spans(tok, text, ids)
        assert len(spans) == len(ids)
        assert "".join(tok.decode([i]) for i in ids) == text
        got = sig.token_scores(tok, [text], [ids])[0]
        assert got == pytest.approx(reference_token_scores(text, probs, spans), abs=1e-9)
    # prefix-decoding fallback gives spans that tile the text
    slow = token_char_spans(type("T", (), {"decode": gpt2_tokenizer.decode})(), text,
                            gpt2_tokenizer(text)["input_ids"])
    assert slow[0][0] == 0 and slow[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in pairwise(slow))


def test_pure_mapping_helpers():
    text = "ab  cd e "
    words = word_spans(text)
    assert words == [(0, 2), (4, 6), (7, 8)]
    assert char_owners(len(text), words) == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert map_words_to_tokens(len(text), words, [0.0, 1.0, 0.5],
                               [(0, 3), (3, 6), (6, 9)]) == pytest.approx([1 / 3, 1.0, 0.5])
    assert map_words_to_tokens(3, [], [], [(0, 3)]) == [0.0]


def test_keep_label_resolution():
    assert keep_label_index({0: "drop", 1: "keep"}) == 1
    assert keep_label_index({"0": "KEEP", "1": "drop"}) == 0
    assert keep_label_index({0: "LABEL_0", 1: "LABEL_1"}) == 1
    with pytest.raises(InputError, match="means keep"):
        keep_label_index({0: "a", 1: "b", 2: "c"})


def test_cli_significance_column(tiny_classifier, tiny_gpt2_model, chains_file, tmp_path):
    out = tmp_path / "sig.parquet"
    code, stdout, err = run_cli("score", chains_file, "-o", out, "--model", tiny_gpt2_model,
                                "--device", "cpu", "--scorer", "surprisal,significance",
                                "--significance-model", tiny_classifier, "--limit", "2")
    assert code == 0, err
    assert summary_of(stdout)["chains"] == 2
    for row in pq.read_table(out).to_pylist():
        n = row["cot_end"] - row["cot_start"]
        assert len(row["significance"]) == n == len(row["surprisal"])
        assert all(0 <= p <= 1 for p in row["significance"])
    missing = tmp_path / "nope.parquet"
    code, _, err = run_cli("score", chains_file, "-o", missing, "--model", tiny_gpt2_model,
                           "--device", "cpu", "--scorer", "significance",
                           "--significance-model", tmp_path / "no-such-dir")
    assert code == 2 and "significance-model" in err and not missing.exists()
