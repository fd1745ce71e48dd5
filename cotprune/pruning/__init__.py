"""`cotprune prune` and `cotprune predictor`: greedy and static pruning, and the rank predictor."""
