"""Data: from a user's file to token ids. Records are read and validated with file:row:field
errors (`records`), rendered by the task's prompt template (`tasks`), encoded with the label
mask and EOS (`encode`), kept in the memory-mapped Arrow cache (`cache`), mixed by weight
(`mix`) and checked for leakage, duplicates and secrets (`checks`).

Imports: the core only (config, errors, metrics, tokenizer, checkpoint, rundir)."""
