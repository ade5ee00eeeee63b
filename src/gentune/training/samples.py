"""Samples at every validation: a fixed, seeded handful of validation rows generated with the
run's own decoding (greedy) at each validation pass, so that how the outputs change over
training is seen, not only the loss. Written to RUN/samples.jsonl (one line per row and
validation: step, row, input, reference, output, the task metric of that row), to TensorBoard
as text, and shown first to last in the run's evaluation report."""

from __future__ import annotations

import random
import time

import torch

from gentune.data.tasks import get_task
from gentune.inference.evaluate import user_text
from gentune.inference.generate import greedy_texts
from gentune.metrics import corpus_metric


def sample_indices(n_records: int, n: int, seed: int) -> list[int]:
    """The same `n` validation rows at every validation (and on resume): seeded, in order."""
    return sorted(random.Random(seed).sample(range(n_records), min(n, n_records)))


@torch.no_grad()
def generate_samples(
    model,
    tokenizer,
    template,
    records: list,
    indices: list[int],
    *,
    step: int,
    task: str,
    batch_size: int,
) -> tuple[list[dict], float]:
    """(one row per sampled record at this step, seconds it took)."""
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    chosen = [records[i] for i in indices]
    outputs = greedy_texts(model, tokenizer, template, chosen, batch_size)
    model.train(was_training)
    metric = get_task(task).validation_metric
    rows = []
    for i, record, out in zip(indices, chosen, outputs, strict=True):
        reference = template.reference(record)
        rows.append(
            {
                "step": step,
                "row": i,
                "input": user_text(record),
                "reference": reference,
                "output": out,
                "metric": metric,
                "score": (
                    round(corpus_metric(metric, [out], [reference]), 4)
                    if reference is not None
                    else None
                ),
            }
        )
    return rows, time.perf_counter() - start
