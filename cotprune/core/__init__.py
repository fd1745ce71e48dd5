"""The model core: loading (`models`), batched forwards (`engine`), attention capture, and the
deletion engine that scores chains with tokens removed: per-chain sessions (`deletion`), row
tasks (`rows`) run by `runner`, with `branch_and_bound`, `bounds` and `packing`.
Imports only `data/` and the ground floor."""
