"""The attention rows from SDPA + captured q/k, held against eager attention (output_attentions)."""

import pytest
import torch

from cotprune.core.attention import (
    attention_rows,
    causal_attention_rows,
    later_query_mean,
    repeat_kv_heads,
)
from cotprune.core.models import ModelOptions, load_model
from cotprune.data.layout import ChainLayout
from cotprune.errors import InputError


def eager_reference(path, layout):
    """[layers, cot_len] answer and later-CoT attention from the full eager matrices, float64."""
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        att = eager(torch.tensor([layout.input_ids]), output_attentions=True).attentions
    full = torch.stack([a[0] for a in att]).double()  # [layers, heads, n, n]
    cs, ce, as_, ae = layout.cot_start, layout.cot_end, layout.answer_start, layout.answer_end
    answer = full[:, :, as_:ae, cs:ce].mean(dim=(1, 2))
    later = torch.zeros_like(answer)
    for t in range(ce - cs - 1):
        later[:, t] = full[:, :, cs + t + 1:ce, cs + t].mean(dim=(1, 2))
    return answer, later


@pytest.mark.parametrize("which", ["tiny_gpt2_model", "tiny_qwen_model"])
def test_attention_rows_match_eager_in_a_padded_batch(which, request):
    path = request.getfixturevalue(which)
    model, tok = load_model(ModelOptions(model=str(path), device="cpu"))
    assert model.config._attn_implementation == "sdpa"
    cl = ChainLayout(tok)
    layouts = [cl.layout(f"What is {i} + {i}?", "We add them. " * (i + 1) + f"It is {2 * i}.",
                         str(2 * i)) for i in range(3)]
    rows = attention_rows(model, layouts, tok.pad_token_id, later_cot=True)
    for layout, got in zip(layouts, rows, strict=True):
        answer, later = eager_reference(path, layout)
        assert got.answer.shape == answer.shape == (2, layout.cot_end - layout.cot_start)
        assert torch.allclose(got.answer.double(), answer, atol=1e-6)
        assert torch.allclose(got.later_cot.double(), later, atol=1e-6)
        assert torch.allclose(got.answer_mean().double(), answer.mean(0), atol=1e-6)
        assert float(got.answer.std()) > 0  # the test can fail: scores do vary per token


def test_causal_attention_rows_is_masked_softmax():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 4), torch.randn(2, 6, 4)
    pos = torch.tensor([2, 4, 5])
    got = causal_attention_rows(q, k, pos, 0.5)
    for h in range(2):
        for i, p in enumerate(pos.tolist()):
            ref = torch.softmax(q[h, i] @ k[h, :p + 1].T * 0.5, -1)
            assert torch.allclose(got[h, i, :p + 1], ref, atol=1e-6)
            assert float(got[h, i, p + 1:].abs().sum()) == 0
    windowed = causal_attention_rows(q, k, pos, 0.5, sliding_window=2)
    assert float(windowed[0, 1, :3].abs().sum()) == 0 and windowed[0, 1, 3:5].sum() > 0.99


def test_repeat_kv_and_later_query_mean():
    k = torch.arange(6.0).reshape(2, 3, 1)
    assert repeat_kv_heads(k, 2)[:, 0, 0].tolist() == [0.0, 0.0, 3.0, 3.0]
    assert later_query_mean(torch.tensor([3.0, 1.0, 5.0]), 3).tolist() == [1.5, 1.0, 0.0]


def test_models_without_llama_style_attention_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10))
    with pytest.raises(InputError, match="Llama-style"):
        attention_rows(model, [], 0)
