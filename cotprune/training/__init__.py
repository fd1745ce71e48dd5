"""Models that write reasoning: sampling, `generate` (teacher chains), `distill` (students on
pruned chains), `eval`, and answer grading."""
