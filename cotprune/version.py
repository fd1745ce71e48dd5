"""The package version, at the ground floor so that manifests can record it without importing
the public API in `cotprune/__init__.py`."""

__version__ = "0.1.0"
