"""`training/sampling`: splitting responses, stopping, left padding, ratio prompts, batches."""

from __future__ import annotations

import pytest

from cotprune.training.sampling import (
    SamplingOptions,
    finish_response,
    pad_left,
    ratio_question,
    split_response,
)


@pytest.mark.parametrize("text, cot, answer", [
    ("Add 2 and 3 to get 5.\nThe answer is 5", "Add 2 and 3 to get 5.", "5"),
    ("2+3=5. The answer is 5.\n", "2+3=5.", "5"),
    ("so \\boxed{\\frac12}", "so \\boxed{\\frac12}", "\\frac12"),
    ("I am not sure", "I am not sure", None),
    ("x\nThe answer is 4\nThe answer is 6", "x\nThe answer is 4", "6"),
])
def test_split_response(text, cot, answer):
    assert split_response(text) == (cot, answer)


def test_split_response_with_custom_marker():
    assert split_response("work work\nFinal: 12", marker="\nFinal: ") == ("work work", "12")


def test_finish_response_stop_pad_and_truncation():
    stop, pad = [9], 0
    assert finish_response([5, 6, 9, 0, 0], stop, 5, pad) == ([5, 6], 3, False)
    assert finish_response([5, 6, 7, 8, 4], stop, 5, pad) == ([5, 6, 7, 8, 4], 5, True)
    # ended by the batch's width, not by the budget: not truncated, pads not counted
    assert finish_response([5, 6, 0, 0], stop, 8, pad) == ([5, 6], 2, False)


def test_pad_left_aligns_ends():
    ids, mask = pad_left([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_sampling_options_name_the_flag():
    from cotprune.errors import InputError

    with pytest.raises(InputError, match="--top-p"):
        SamplingOptions(top_p=0)
    with pytest.raises(InputError, match="--samples"):
        SamplingOptions(samples=2, temperature=0)


def test_ratio_question_format():
    assert ratio_question("Q?", 0.5) == "Q?\n<keep ratio 0.5>"
    assert ratio_question("Q?", 0.7000001) == "Q?\n<keep ratio 0.7>"
    assert ratio_question("Q?", None) == "Q?"


def test_left_padded_batch_equals_one_by_one(tiny_qwen_model):
    """Greedy continuations do not depend on which other prompts share the batch."""
    from cotprune.core.models import ModelOptions, load_model
    from cotprune.data.layout import ChainLayout
    from cotprune.training.sampling import generate_batch, stop_token_ids

    model, tok = load_model(ModelOptions(str(tiny_qwen_model), dtype="float32", device="cpu"))
    cl = ChainLayout(tok)
    prompts = [cl.prompt_ids("What is 2 + 2?"), cl.prompt_ids("A much longer question " * 6)]
    opts = SamplingOptions(max_new_tokens=6)
    stops = stop_token_ids(tok, cl)
    together = generate_batch(model, tok, prompts, opts, stops)
    alone = [generate_batch(model, tok, [p], opts, stops)[0] for p in prompts]
    assert together == alone
    assert all(r.generated_tokens <= 6 for g in together for r in g)


