"""Files and data: Parquet I/O and manifests (`files`), importers, the synthetic task, and the
token layout of a chain (`layout`). Imports nothing above the ground floor (errors, console)."""
