"""dpsynth.data: from a user's file to training records.

`reader.read_table` (file → DataFrame of strings) → `schema.validate_table` (column checks, cleaning, aggregate
report) → `control_codes.ControlCodes.prefix` (labels → "col: value | ...\\n\\n") → `encode.encode_records`
(prefix + text + EOS token ids, cut to --max-tokens) → `encode.collate` (padded micro-batches).
`demo.load_demo_dataset` gives real public reviews; `split.split_train_test` a deterministic split.
Submodules are imported directly, so importing this package stays cheap (no torch, no tokenizers).
"""
