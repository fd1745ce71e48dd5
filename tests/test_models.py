import time

import pytest
import torch

from cotprune.core import models
from cotprune.core.models import ModelOptions, load_model, load_tokenizer, resolve_model_path
from cotprune.errors import InputError


def test_option_validation_names_the_flag():
    with pytest.raises(InputError, match="--dtype"):
        ModelOptions(dtype="float8")
    with pytest.raises(InputError, match="--device"):
        ModelOptions(device="tpu")


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_on_a_cpu_without_it_warns(monkeypatch, caplog, dtype, native):
    monkeypatch.setattr(models, "cpu_computes", lambda name: native)
    assert models.resolve_dtype(dtype, torch.device("cpu")) is getattr(torch, dtype)
    assert ("no native " + dtype in caplog.text) is not native
    assert ("--dtype float32" in caplog.text) is not native


def test_float32_and_auto_on_the_cpu_never_warn(monkeypatch, caplog):
    monkeypatch.setattr(models, "cpu_computes", lambda name: False)
    assert models.resolve_dtype("float32", torch.device("cpu")) is torch.float32
    assert models.resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert caplog.text == ""


def test_cpu_check_assumes_native_where_torch_cannot_tell(monkeypatch):
    assert isinstance(models.cpu_computes("bfloat16"), bool)
    monkeypatch.setattr(torch.ops, "mkldnn", object())
    assert models.cpu_computes("bfloat16") is True and models.cpu_computes("float16") is True


@pytest.mark.parametrize("name", ["./missing-model", "/no/such/dir", "a/b/c"])
def test_missing_paths_are_input_errors(name):
    with pytest.raises(InputError, match="does not exist"):
        resolve_model_path(name)


def test_file_instead_of_directory(tmp_path):
    f = tmp_path / "model.bin"
    f.write_text("x")
    with pytest.raises(InputError, match="directory"):
        resolve_model_path(str(f))


def test_local_directory_loads_with_dtype(tiny_gpt2_model):
    import torch

    model, tok = load_model(ModelOptions(model=str(tiny_gpt2_model), device="cpu",
                                         dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
    assert tok.pad_token is not None


def test_adapter_must_be_a_peft_directory(tiny_gpt2_model, tmp_path):
    with pytest.raises(InputError, match="adapter_config.json"):
        load_model(ModelOptions(model=str(tiny_gpt2_model), device="cpu", adapter=str(tmp_path)))


def test_merged_adapter_gives_the_adapter_logits(tiny_qwen_model, tmp_path):
    """`merge_adapter` folds LoRA into the weights: the same logits within float rounding."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_qwen_model)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear",
                                           init_lora_weights=False))  # B != 0: it changes logits
    lora.save_pretrained(tmp_path / "adapter")
    opts = ModelOptions(model=str(tiny_qwen_model), adapter=str(tmp_path / "adapter"),
                        dtype="float32", device="cpu")
    plain, _ = load_model(ModelOptions(model=str(tiny_qwen_model), dtype="float32",
                                       device="cpu"))
    wrapped, _ = load_model(opts)
    merged, _ = load_model(opts, merge_adapter=True)
    assert not hasattr(merged, "peft_config")
    ids = torch.tensor([[5, 9, 13, 2, 7]])
    with torch.no_grad():
        a, b = wrapped(input_ids=ids).logits, merged(input_ids=ids).logits
        c = plain(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c, atol=1e-3)


@pytest.mark.slow
def test_default_alias_converts_once_then_loads_fast(default_model_cache):
    import torch

    model, tok = load_model(ModelOptions(device="cpu"))  # converts on first use
    checkpoint = default_model_cache / "models" / "smollm2-135m"
    assert (checkpoint / "model.safetensors").exists() and (checkpoint / "config.json").exists()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    start = time.perf_counter()
    again, _ = load_model(ModelOptions(device="cpu"))
    assert time.perf_counter() - start < 15  # about a second on an idle CPU
    ids = torch.tensor([tok("The capital of France is")["input_ids"]])
    with torch.no_grad():
        a, b = model(ids).logits, again(ids).logits
    assert torch.equal(a, b)
    paris = tok(" Paris", add_special_tokens=False)["input_ids"][0]
    assert int(a[0, -1].argmax()) == paris  # a real pretrained model, not random weights


@pytest.mark.slow
def test_layout_on_the_default_tokenizer(default_model_cache):
    from cotprune.data.layout import ChainLayout, decode

    tok = load_tokenizer()
    cl = ChainLayout(tok)
    assert cl.has_template and cl.end_of_turn.startswith("<|im_end|>")
    cot = "Natalia sold 48/2 = 24 clips.\nThen 48+24 = 72  total!"
    lay = cl.layout("How many clips?", cot, "72")
    assert decode(tok, lay.cot_ids) == cot
    assert decode(tok, lay.input_ids[:lay.cot_start]).endswith("<|im_start|>assistant\n")
