"""cotprune: find the chain-of-thought tokens that matter, delete the rest, train on the rest."""

__version__ = "0.1.0"
