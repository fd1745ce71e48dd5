"""The training parts `distill` and `rl` share: token log-probs, processes, LoRA, checkpoints,
metrics. Each module is small and imports torch only where it needs it."""
