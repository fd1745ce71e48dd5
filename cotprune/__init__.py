"""cotprune: find the chain-of-thought tokens that matter, delete the rest, train on the rest."""

from cotprune.version import __version__

__all__ = ["__version__"]
