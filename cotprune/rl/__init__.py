"""`cotprune rl`: on-policy RL with verifiable rewards that teaches short, correct reasoning.

- `rewards`: accuracy, the length-penalised reward (arXiv 2502.04463), Bingo's significance-aware
  reward with its dynamic schedule (arXiv 2506.08125), DAPO overlong shaping, group advantages.
- `selection`: which response tokens enter the loss: entropy "forking" tokens (arXiv 2506.01939)
  and NAT's unbiased subsets URS / RPC with Horvitz-Thompson weights (arXiv 2603.06619).
- `loss`: the per-token PPO-clip term and the grpo / dapo / dr_grpo aggregations.
- `update`: one step's policy update (micro-batches, real truncation for RPC).
- `rollout`: sampling and grading.
- `response_significance`: Bingo's per-token significance (surprisal, attention, predictor,
  classifier).
- `trainer`: the loop, metrics, checkpoints and `--resume`.
"""
