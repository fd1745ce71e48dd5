"""cotprune: find the chain-of-thought tokens that matter, delete the rest, train on the rest.

The Python API is the stages the commands run, with their option dataclasses:

    from cotprune import ModelOptions, PruneOptions, run_prune
    run_prune("chains.parquet", "pruned.parquet", ModelOptions(), PruneOptions(keep=[0.5]))

Names are imported on first use, so `import cotprune` (and `cotprune --help`) stays light.
"""

from __future__ import annotations

import importlib

from cotprune.version import __version__

_API = {
    "ModelOptions": "cotprune.core.models",
    "RunOptions": "cotprune.core.stage",
    "ScoreOptions": "cotprune.scoring.score",
    "run_score": "cotprune.scoring.score",
    "PruneOptions": "cotprune.pruning.prune",
    "GreedyOptions": "cotprune.pruning.greedy",
    "run_prune": "cotprune.pruning.prune",
    "SamplingOptions": "cotprune.training.sampling",
    "GenerateOptions": "cotprune.training.generate_chains",
    "run_generate": "cotprune.training.generate_chains",
    "DistillOptions": "cotprune.training.distill",
    "LoraOptions": "cotprune.training.distill",
    "run_distill": "cotprune.training.distill",
    "EvalOptions": "cotprune.training.evaluate",
    "run_eval": "cotprune.training.evaluate",
    "read_table": "cotprune.data.files",
    "synth_arithmetic": "cotprune.data.synth",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'cotprune' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
