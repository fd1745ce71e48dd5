"""The model core: loading (`models`), batched forwards (`engine`), attention capture, and the
deletion engine (`deletion`, `bounds`, `packing`) that scores chains with tokens removed.
Imports only `data/` and the ground floor."""
