import pytest

from cotprune.data.layout import ANSWER_PREFIX, ChainLayout, decode, join_segments

COTS = [
    "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.",
    "  leading spaces and trailing ones  ",
    "Ünïcödé — 3×4=12 ✓, then  double  spaces.\n\nNew paragraph!",
    "x",
]


@pytest.fixture(params=["gpt2", "qwen"])
def tokenizer(request, gpt2_tokenizer, qwen_tokenizer):
    return gpt2_tokenizer if request.param == "gpt2" else qwen_tokenizer


@pytest.mark.parametrize("cot", COTS)
def test_cot_span_decodes_to_cot_text(tokenizer, cot):
    lay = ChainLayout(tokenizer).layout("What is 6 times 7?", cot, "42")
    assert decode(tokenizer, lay.cot_ids) == cot
    assert lay.cot_ids == tokenizer(cot, add_special_tokens=False)["input_ids"]
    answer_text = decode(tokenizer, lay.input_ids[lay.answer_start:lay.answer_end])
    assert answer_text.startswith(ANSWER_PREFIX + "42")
    assert lay.answer_end == len(lay.input_ids)
    assert 0 < lay.cot_start <= lay.cot_end == lay.answer_start < lay.answer_end


def test_chat_template_used_when_present(qwen_tokenizer, gpt2_tokenizer):
    qwen = ChainLayout(qwen_tokenizer)
    assert qwen.has_template and qwen.end_of_turn.startswith("<|im_end|>")
    prompt = decode(qwen_tokenizer, qwen.prompt_ids("Why?"))
    assert prompt.endswith("<|im_start|>assistant\n") and "Why?" in prompt
    gpt2 = ChainLayout(gpt2_tokenizer)
    assert not gpt2.has_template and gpt2.end_of_turn == "<|endoftext|>"
    assert decode(gpt2_tokenizer, gpt2.prompt_ids("Why?")) == "Question: Why?\nAnswer:\n"


def test_prompt_ids_parse_special_tokens(qwen_tokenizer):
    ids = ChainLayout(qwen_tokenizer).prompt_ids("Q")
    assert qwen_tokenizer.convert_tokens_to_ids("<|im_start|>") in ids


def test_join_segments_matches_layout(qwen_tokenizer):
    cl = ChainLayout(qwen_tokenizer)
    lay = cl.layout("Q?", "a b c", "7")
    again = join_segments(cl.prompt_ids("Q?"), cl.cot_ids("a b c"), cl.answer_ids("7"))
    assert again == lay


def test_deleting_cot_tokens_keeps_prompt_and_answer_ids(gpt2_tokenizer):
    cl = ChainLayout(gpt2_tokenizer)
    lay = cl.layout("Q?", "one two three four", "9")
    pruned = join_segments(lay.input_ids[:lay.cot_start], lay.cot_ids[::2],
                           lay.input_ids[lay.answer_start:])
    assert pruned.input_ids[:pruned.cot_start] == lay.input_ids[:lay.cot_start]
    assert pruned.input_ids[pruned.answer_start:] == lay.input_ids[lay.answer_start:]
