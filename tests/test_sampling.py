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


# --- the decoding loop, on a tiny model ------------------------------------------------------

def _tiny(model_dir):
    from cotprune.core.models import ModelOptions, load_model

    return load_model(ModelOptions(str(model_dir), dtype="float32", device="cpu"))


def test_decode_equals_hf_generate_greedy(tiny_qwen_model):
    """The own decoding loop (rows leave the batch when they stop) gives HF generate's tokens."""
    import torch

    from cotprune.training.sampling import decode, hf_generate

    model, _ = _tiny(tiny_qwen_model)
    torch.manual_seed(0)
    prompts = [torch.randint(3, 200, (n,)).tolist() for n in (5, 9, 3, 12)]
    opts = SamplingOptions(max_new_tokens=12)
    # Stop ids that the random model does emit, so that rows end at different steps.
    free = hf_generate(model, prompts, opts, [0], pad_id=0)
    stops = sorted({row[k] for row, k in zip(free, (2, 5, 8, 11), strict=True)})
    ours = decode(model, prompts, opts, stops, pad_id=0)
    theirs = hf_generate(model, prompts, opts, stops, pad_id=0)
    lengths = set()
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine == ref[:len(mine)]
        assert mine[-1] in stops or len(mine) == 12
        lengths.add(len(mine))
        if len(mine) < 12:  # HF pads a stopped row; ours has stopped
            assert mine[-1] in stops
    assert len(lengths) > 1, "the test needs rows that stop at different steps"


def test_decode_sampling_is_seeded_and_top_p_tiny_is_greedy(tiny_qwen_model):
    from cotprune.training.sampling import decode

    model, _ = _tiny(tiny_qwen_model)
    prompts = [[5, 6, 7], [8, 9]]
    sampled = SamplingOptions(max_new_tokens=8, temperature=1.0, samples=3)
    a = decode(model, prompts, sampled, [1], pad_id=0, seed=4)
    assert a == decode(model, prompts, sampled, [1], pad_id=0, seed=4)
    assert a != decode(model, prompts, sampled, [1], pad_id=0, seed=5)
    assert len(a) == 6 and len({tuple(r) for r in a}) > 1
    nucleus = SamplingOptions(max_new_tokens=8, temperature=1.0, top_p=1e-6, samples=2)
    greedy = decode(model, prompts, SamplingOptions(max_new_tokens=8), [1], pad_id=0)
    assert decode(model, prompts, nucleus, [1], pad_id=0, seed=1) == \
        [greedy[0], greedy[0], greedy[1], greedy[1]]


def test_next_tokens_top_p_keeps_the_crossing_token():
    import torch

    from cotprune.training.sampling import next_tokens

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    opts = SamplingOptions(temperature=1.0, top_p=0.6)
    g = torch.Generator().manual_seed(0)
    drawn = {int(next_tokens(logits, opts, g)) for _ in range(200)}
    assert drawn == {0, 1}
