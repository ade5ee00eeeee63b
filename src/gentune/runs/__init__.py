"""Runs as data: listing and comparing run directories (`compare`: manifest, metrics.csv,
samples.jsonl, each run scored on the same rows) and `sweep`, many ordinary runs chosen by an
Optuna study shared through its storage, over the settings of a `space` file.

Imports: the core, `data`, `models`, `inference` and `training` (a sweep trains); nothing
imports it but the commands."""
