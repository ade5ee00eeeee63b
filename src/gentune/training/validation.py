"""Validation during training: loss and perplexity on the validation rows, the task metric on
a fixed subset of generations, the best value so far and early stopping."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from gentune.checkpoint import State
from gentune.data.tasks import get_task
from gentune.inference.generate import greedy_texts
from gentune.metrics import corpus_metric
from gentune.models.loss import corpus_nll
from gentune.tokenizer import source_pad_id
from gentune.training.prepare import Prepared
from gentune.training.samples import generate_samples, sample_indices


def evaluate_loss(
    model, examples, pad_id: int, batch_size: int, autocast=nullcontext
) -> tuple[float, float]:
    """(mean loss per target token, perplexity) = exp(Σ nll / Σ target tokens), the forward in
    `autocast()`: training's, so the validation loss is measured as the training loss is (bf16
    on a CPU with it: 4x the fp32 matmul rate; de-en's validation 7.1 -> 4.6 s,
    bench/results/memory.md)."""
    total, count = corpus_nll(model, examples, pad_id, batch_size, autocast)
    loss = total / max(count, 1)
    return loss, math.exp(min(loss, 50.0))


@torch.no_grad()
def generation_metric(
    model,
    tokenizer,
    template,
    records,
    metric: str,
    *,
    rows: int | None,
    budget_s: float,
    batch_size: int,
    agree: Callable[[bool], bool] | None = None,
) -> tuple[float, int]:
    """The task metric on the first `rows` validation records (greedy). With rows=None the
    subset is sized by the time budget: batches are generated until it is spent; `agree`
    makes every process take the main one's decision (a sharded model generates only with
    all of them)."""

    was_training = model.training
    model.eval()
    pool = records if rows is None else records[:rows]
    outputs, refs, start = [], [], time.time()
    for i in range(0, len(pool), batch_size):
        chunk = pool[i : i + batch_size]
        outputs += greedy_texts(model, tokenizer, template, chunk, batch_size)
        refs += [template.reference(r) for r in chunk]
        spent = rows is None and time.time() - start > budget_s
        if agree(spent) if agree is not None else spent:
            break
    model.train(was_training)
    return corpus_metric(metric, outputs, refs), len(outputs)


def validate(
    prep: Prepared, state: State, row: dict, *, world: int, log=print, autocast=nullcontext
) -> float | None:
    """Validation loss (in training's `autocast`) and perplexity into `row`, plus the task
    metric on the fixed generation subset (greedy, as `generate` decodes); updates the best
    value, the patience count and early stopping in `state`. Returns the value the best
    checkpoint is chosen by (None: no validation rows)."""
    from accelerate.utils import broadcast_object_list

    cfg = prep.cfg  # the run's settings, the automatic ones decided

    if not prep.val_ex:
        return None
    row["val_loss"], row["val_perplexity"] = evaluate_loss(
        prep.model, prep.val_ex, source_pad_id(prep.tokenizer), cfg.micro, autocast
    )
    value = row["val_loss"]
    metric = cfg.metric if cfg.metric != "val_loss" else get_task(cfg.task).validation_metric
    scored = prep.scored_val[: cfg.eval_generate]  # (--metric other than val_loss needs some)
    if scored:
        score, n = generation_metric(
            prep.model,
            prep.tokenizer,
            prep.template,
            scored,
            metric,
            rows=state.gen_rows,
            budget_s=cfg.eval_budget_s,
            batch_size=cfg.micro,
            agree=(lambda flag: bool(broadcast_object_list([flag])[0])) if world > 1 else None,
        )
        if state.gen_rows is None:  # all processes use the main process's subset size
            state.gen_rows = broadcast_object_list([n])[0] if world > 1 else n
        row["val_metric"] = score
        if cfg.metric != "val_loss":
            value = score
    improved = state.best is None or (
        value > state.best if cfg.higher_is_better else value < state.best
    )
    if improved:
        state.best, state.best_step, state.bad_evals = value, state.step, 0
    else:
        state.bad_evals += 1
    log(
        f"gentune: step {state.step}: val loss {row['val_loss']:.4f}, perplexity "
        f"{row['val_perplexity']:.2f}"
        + (
            f", {metric} {row['val_metric']:.2f} on {state.gen_rows} rows"
            if "val_metric" in row
            else ""
        )
        + (" (best)" if improved else f" (no improvement {state.bad_evals}x)")
    )
    if cfg.samples and prep.scored_val:
        rows, seconds = generate_samples(
            prep.model,
            prep.tokenizer,
            prep.template,
            prep.scored_val,
            sample_indices(len(prep.scored_val), cfg.samples, cfg.seed),
            step=state.step,
            task=cfg.task,
            batch_size=cfg.micro,
        )
        state.samples += rows
        log(f"gentune: step {state.step}: {len(rows)} samples generated in {seconds:.1f} s")
    if cfg.patience and state.bad_evals >= cfg.patience:
        state.stopped_early = True
    return value
