"""Models: the embedded models and their conversion (`registry`), every family's quirks in one
table (`families`), loading by kind with LoRA and precision (`load`), and the loss over target
tokens (`loss`).

Imports: the core and `data` (batches for the corpus loss)."""
