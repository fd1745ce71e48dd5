"""`cotprune score`: per-token scores (surprisal, entropy, attention, loo, significance)."""
