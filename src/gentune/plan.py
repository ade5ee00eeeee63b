"""`gentune plan`: what training will do, before it does it.

Row counts, token-length percentiles, truncation, targets without trainable tokens, the first
example with its masked and trained spans marked, parameter counts, and peak memory and time
per epoch estimated from a short measured probe (two optimizer-free steps on real batches).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from . import checks, memory
from .config import TrainConfig
from .data import read_records
from .encode import IGNORE, PackedExamples, collate_for, length_grouped_batches
from .errors import DataError, TrainingError
from .memory import peak_memory_mb
from .models import resolve_precision
from .prepare import data_fields, prepare
from .tasks import get_task
from .tokenizer import source_pad_id, source_tokenizer
from .train import TargetLoss

MASK_OPEN, MASK_CLOSE = "⟦", "⟧"  # around trained spans in the rendered example


def percentiles(values: list[int]) -> str:
    """p50 / p90 / p99 / max of token counts, as text."""
    if not values:
        return "-"
    p = np.percentile(values, [50, 90, 99])
    return f"p50 {p[0]:.0f} · p90 {p[1]:.0f} · p99 {p[2]:.0f} · max {max(values)}"


def render_spans(example, tokenizer) -> str:
    """The example's text with trained spans in ⟦…⟧ (everything else is masked); for an
    encoder-decoder the source, then the target."""
    if example.seq2seq:
        source = source_tokenizer(tokenizer).decode(example.input_ids, skip_special_tokens=False)
        return f"{source}\n→ {_span(example.labels, True, tokenizer)}"
    out, run, trained = [], [], None
    for tok, lab in zip(example.input_ids, example.labels, strict=True):
        is_trained = lab != IGNORE
        if trained is not None and is_trained != trained:
            out.append(_span(run, trained, tokenizer))
            run = []
        run.append(tok)
        trained = is_trained
    if run:
        out.append(_span(run, trained, tokenizer))
    return "".join(out)


def _span(ids, trained, tokenizer) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return f"{MASK_OPEN}{text}{MASK_CLOSE}" if trained else text


def training_autocast(cfg: TrainConfig):
    """The autocast context training will run its forward passes in (its precision)."""
    precision, _ = resolve_precision(cfg.precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=dtype, enabled=dtype is not None)


def probe(prep, cfg: TrainConfig, steps: int = 2) -> dict:
    """Time forward+backward on the longest micro-batch and on typical ones."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = prep.model.to(device)  # where training runs: the peak read is that device's
    model.train()
    loss_model = TargetLoss(model)
    collate_fn = collate_for(cfg.packing)
    batches = length_grouped_batches(
        prep.train_ex, cfg.micro, seed=cfg.seed, epoch=0, group=cfg.group_by_length
    )
    lengths = prep.train_ex.lengths
    longest = max(batches, key=lambda b: lengths[b].max())
    before = peak_memory_mb()
    timings = []
    for b in [longest] + batches[:steps]:
        batch = collate_fn(prep.train_ex.take(b), source_pad_id(prep.tokenizer))
        batch = {k: v.to(device) for k, v in batch.items()}
        start = time.time()
        with training_autocast(cfg):
            nll, n = loss_model(batch)
        (nll / max(n, 1)).backward()
        timings.append((time.time() - start, batch["input_ids"].numel()))
    model.zero_grad(set_to_none=True)
    measured = timings[1:] or timings  # the first call includes warm-up
    per_token = sum(t for t, _ in measured) / sum(n for _, n in measured)
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    return {
        "seconds_per_epoch": per_token * padded,
        "peak_memory_mb": peak_memory_mb(),
        "memory_before_mb": before,
        "tokens_per_s": 1 / per_token,
    }


def data_checks(prep, tests: Sequence[str] = ()) -> checks.Report:
    """`checks.check` of the training rows against the validation rows and the test files."""
    kind = get_task(prep.cfg.task).kind
    held = [("validation", prep.val_records)]
    held += [
        (f"test {path}", read_records(path, kind=kind, fields=data_fields(prep.cfg)))
        for path in tests
    ]
    return checks.check(prep.train_records, held)


def plan(
    cfg: TrainConfig, *, measure: bool = True, tests: Sequence[str] = (), fail_on_leak=False
) -> str:
    """What training with `cfg` would do, as text: rows, token percentiles, truncation, the
    data checks (against the validation rows and the `tests` files), the first example with
    its trained spans, parameters and (measure=True) time and memory from a short probe.
    fail_on_leak: validation or test rows found in the training data raise a DataError."""
    lines: list[str] = []
    prep = prepare(cfg, log=lambda *_: None)
    found = data_checks(prep, tests)
    if fail_on_leak and found.leaked:
        first = next(f for f in found.leaks if f.count)
        raise DataError(
            f"--fail-on-leak: {found.leaked} validation or test rows are (nearly) training "
            f"rows, e.g. {first.examples[0]}; remove them from the training data"
        )
    cfg = prep.cfg  # with the automatic settings decided
    tok = prep.tokenizer
    # per-example statistics, not per packed row
    examples = prep.train_ex
    if isinstance(examples, PackedExamples):
        examples = examples.examples
    inputs = (examples.lengths - examples.n_targets).tolist()
    targets = examples.n_targets.tolist()
    rep = prep.train_report
    lines.append(
        f"task {cfg.task} · model {cfg.model} · method {cfg.method} · template "
        f"{prep.template.style}"
    )
    lines.append(
        f"rows: {len(prep.train_records)} train, {len(prep.val_records)} validation"
        + ("" if cfg.val else f" (split off --data, seed {cfg.seed})")
    )
    for r in prep.read_reports:
        if r.skipped:
            lines.append(
                f"  skipped {len(r.skipped)} invalid rows in {r.path}, e.g. {r.skipped[0]}"
            )
    lines.append("data checks:")
    lines += [f"  {line}" for line in found.lines()]
    context, target = (
        ("source (encoder)", "target (decoder, EOS included)")
        if examples[0].seq2seq
        else ("context (masked)", "target (trained, EOS included)")
    )
    lines.append(f"tokens per example, {context}: {percentiles(inputs)}")
    lines.append(f"tokens per example, {target}: {percentiles(targets)}")
    lines.append(
        f"max length {prep.max_length}: {rep.truncated_rows} rows get their input "
        f"shortened ({rep.truncated_tokens} tokens removed), targets are never cut"
    )
    if rep.split_rows:
        lines.append(f"  {rep.split_rows} long texts are split into windows")
    if rep.skipped_too_long:
        lines.append(
            f"  {rep.skipped_too_long} rows skipped, target too long: "
            + ", ".join(rep.too_long[:10])
        )
    empty = int((examples.n_targets <= 1).sum())
    lines.append(f"targets with no trainable tokens besides EOS: {empty}")
    if cfg.packing:
        lines.append(f"packing: {len(examples)} examples into {len(prep.train_ex)} rows")
    lines.append(
        f"parameters: {prep.n_trainable:,} trainable of {prep.n_total:,} "
        f"({100 * prep.n_trainable / prep.n_total:.2f} %)"
    )
    steps = cfg.max_steps or math.ceil(math.ceil(len(prep.train_ex) / cfg.batch_size) * cfg.passes)
    lines.append(
        f"optimizer steps: {steps} (batch {cfg.batch_size} = micro-batch {cfg.micro} "
        f"x {cfg.batch_size // cfg.micro} accumulation), peak lr {cfg.peak_lr:g}"
    )
    precision, reason = resolve_precision(cfg.precision)
    lines.append(f"precision: {precision} ({reason}); master weights and optimizer in fp32")
    for choice in prep.choices:
        lines.append(f"chosen: {choice.line()}")
    lines.append("")
    lines.append(f"first example ({examples[0].where}), trained spans in {MASK_OPEN}…{MASK_CLOSE}:")
    lines.append(render_spans(examples[0], tok))
    lines.append("")
    if measure:
        with torch.enable_grad():
            p = probe(prep, cfg)
        lines.append(
            f"probe: {p['tokens_per_s']:.0f} tokens/s (padded) → about "
            f"{p['seconds_per_epoch'] / 60:.1f} min per epoch; peak memory "
            f"{p['peak_memory_mb'] / 1024:.2f} GiB "
            f"({'GPU allocated' if torch.cuda.is_available() else 'process RSS'})"
        )
    if cfg.memory_budget:
        try:
            with torch.enable_grad():
                layout = memory.choose_layout(
                    prep.model,
                    prep.train_ex,
                    cfg,
                    tokens=memory.probe_start(cfg, prep.train_ex),
                    pad_id=source_pad_id(tok),
                    autocast=lambda: training_autocast(cfg),
                    pending_mb=memory.optimizer_state_mb(prep.n_trainable),
                    log=lambda line: lines.append(line.removeprefix("gentune: ")),
                )
            lines.append(
                f"layout: {layout.describe()} (fits --memory-budget {cfg.memory_budget:g})"
            )
        except TrainingError as e:
            lines.append(f"layout: {e}")
    return "\n".join(lines)
