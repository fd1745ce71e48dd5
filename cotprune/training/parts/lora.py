"""LoRA configuration with one set of defaults for `distill` and `rl`.

Dropout defaults to 0 (peft's own default): in `rl` it would make the policy that samples and
the policy that is updated differ at the first update (ratio != 1 before any step), and TRL's
GRPO switches it off for the same reason; `distill --lora-dropout` can still set it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cotprune.errors import InputError

R, ALPHA, DROPOUT, TARGETS = 16, 32, 0.0, "all-linear"


@dataclass
class LoraOptions:
    r: int = R
    alpha: int = ALPHA
    dropout: float = DROPOUT
    targets: str = TARGETS

    def __post_init__(self) -> None:
        if self.r < 1:
            raise InputError("--lora-r must be at least 1")
        if not 0 <= self.dropout < 1:
            raise InputError("--lora-dropout must be in [0, 1)")

    def target_modules(self):
        if self.targets == "all-linear":
            return self.targets
        return [t.strip() for t in self.targets.split(",") if t.strip()]


def apply_lora(model, lora: LoraOptions):
    """The model with fresh LoRA adapters (peft); bad target names are bad input (exit 2)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules(), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise InputError(f"--lora-targets: {e}") from None
