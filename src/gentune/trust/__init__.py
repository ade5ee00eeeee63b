"""Trust: what fine-tuning did, read from a run, its base and rows. `compare` scores the same
tokens under both models in one teacher-forced pass each (the tuned token's rank under the
base, Δ log-prob, KL, entropies, the alternatives); `memorisation` measures what the model
keeps of its training rows (exact match and ROUGE-L gap, extraction probability, membership
AUC, reproduced targets, secrets); `attribution` is gradient × input over the source;
`explain` runs them for `gentune explain` and `page` renders the HTML.

Imports: the core, `data`, `models` and `inference`."""
