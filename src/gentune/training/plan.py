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

from gentune.config import TrainConfig
from gentune.data import checks
from gentune.data.encode import IGNORE, PackedExamples, collate_for
from gentune.data.records import read_records
from gentune.data.tasks import get_task
from gentune.errors import DataError, TrainingError
from gentune.models.load import resolve_precision
from gentune.models.loss import TargetLoss
from gentune.tokenizer import source_pad_id, source_tokenizer
from gentune.training import memory, schedule
from gentune.training.memory import peak_memory_mb
from gentune.training.optim import weights_line
from gentune.training.prepare import data_fields, prepare

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


def probe(prep, cfg: TrainConfig, tokens: int | None, steps: int = 2) -> dict:
    """Time forward+backward on the epoch's largest forward pass and on typical ones, cut by
    the layout's token cap as training cuts them."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = prep.model.to(device)  # where training runs: the peak read is that device's
    model.train()
    loss_model = TargetLoss(model)
    collate_fn = collate_for(cfg.packing)
    lengths = prep.train_ex.lengths
    passes = schedule.forward_passes(
        prep.train_ex, schedule.epoch_batches(cfg, prep.train_ex, 0), tokens
    )
    largest = max(passes, key=lambda rows: len(rows) * lengths[rows].max())
    before = peak_memory_mb()
    timings = []
    for rows in [largest] + passes[:steps]:
        batch = collate_fn(prep.train_ex.take(rows), source_pad_id(prep.tokenizer))
        batch = {k: v.to(device) for k, v in batch.items()}
        start = time.time()
        with training_autocast(cfg):
            nll, n = loss_model(batch)
        (nll / max(n, 1)).backward()
        timings.append((time.time() - start, batch["input_ids"].numel()))
    model.zero_grad(set_to_none=True)
    measured = timings[1:] or timings  # the first call includes warm-up
    per_token = sum(t for t, _ in measured) / sum(n for _, n in measured)
    padded = sum(len(rows) * int(lengths[rows].max()) for rows in passes)
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
    its trained spans, parameters, the steps and forward passes training will run, and
    (measure=True) time and memory from a short probe.
    fail_on_leak: validation or test rows found in the training data raise a DataError."""
    prep = prepare(cfg, log=lambda *_: None)
    found = data_checks(prep, tests)
    if fail_on_leak and found.leaked:
        first = next(f for f in found.leaks if f.count)
        raise DataError(
            f"--fail-on-leak: {found.leaked} validation or test rows are (nearly) training "
            f"rows, e.g. {first.examples[0]}; remove them from the training data"
        )
    lines = _data_lines(prep, found) + _training_lines(prep)
    examples = _examples(prep)
    lines.append("")
    lines.append(f"first example ({examples[0].where}), trained spans in {MASK_OPEN}…{MASK_CLOSE}:")
    lines.append(render_spans(examples[0], prep.tokenizer))
    lines.append("")
    lines += _layout_lines(prep, measure)
    return "\n".join(lines)


def _examples(prep):
    """The training examples, not packed rows (per-example statistics)."""
    examples = prep.train_ex
    return examples.examples if isinstance(examples, PackedExamples) else examples


def _data_lines(prep, found: checks.Report) -> list[str]:
    """Rows, skipped rows, the data checks, token percentiles and truncation."""
    cfg, rep, examples = prep.cfg, prep.train_report, _examples(prep)
    lines = [
        f"task {cfg.task} · model {cfg.model} · method {cfg.method} · template "
        f"{prep.template.style}",
        f"rows: {len(prep.train_records)} train, {len(prep.val_records)} validation"
        + ("" if cfg.val else f" (split off --data, seed {cfg.seed})"),
    ]
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
    inputs = (examples.lengths - examples.n_targets).tolist()
    lines.append(f"tokens per example, {context}: {percentiles(inputs)}")
    lines.append(f"tokens per example, {target}: {percentiles(examples.n_targets.tolist())}")
    lines.append(f"max length {prep.max_length}: {rep.summary()}")  # (as training logs it)
    empty = int((examples.n_targets <= 1).sum())
    lines.append(f"targets with no trainable tokens besides EOS: {empty}")
    return lines


def _training_lines(prep) -> list[str]:
    """Packing, parameters, optimizer steps (training's own count), precision, the choices."""
    cfg = prep.cfg  # with the automatic settings decided
    lines = []
    if cfg.packing:
        lines.append(f"packing: {len(_examples(prep))} examples into {len(prep.train_ex)} rows")
    lines.append(
        f"parameters: {prep.n_trainable:,} trainable of {prep.n_total:,} "
        f"({100 * prep.n_trainable / prep.n_total:.2f} %)"
    )
    steps = schedule.total_steps(cfg, len(prep.train_ex))
    lines.append(
        f"optimizer steps: {steps} (batch {cfg.batch} = micro-batch {cfg.micro} "
        f"x {cfg.batch // cfg.micro} accumulation), peak lr {cfg.peak_lr:g}"
    )
    precision, reason = resolve_precision(cfg.precision)
    lines.append(
        f"precision: {precision} ({reason}); {weights_line(cfg.master_weights, cfg.moments)}"
    )
    lines += [f"chosen: {choice.line()}" for choice in prep.choices]
    return lines


def _layout(prep, lines: list[str]):
    """(the layout training will choose, why): `schedule.choose_layout`, a --memory-budget
    probe included, its lines appended to `lines`; checkpointing set as the layout says."""
    cfg = prep.cfg
    with torch.enable_grad():
        layout, why = schedule.choose_layout(
            cfg,
            prep,
            saved=None,
            autocast=lambda: training_autocast(cfg),
            first_step=True,
            world=1,
            log=lambda line: lines.append(line.removeprefix("gentune: ")),
        )
    if layout:
        memory.set_checkpointing(prep.model, layout.gradient_checkpointing)
    return layout, why


def measure(cfg: TrainConfig) -> tuple[TrainConfig, dict]:
    """The settings as training resolves them, and a probe of the layout training will use:
    seconds and optimizer steps per epoch, tokens/s, peak memory (`gentune plan` for a sweep)."""
    prep = prepare(cfg, log=lambda *_: None)
    layout, _ = _layout(prep, [])
    with torch.enable_grad():
        p = probe(prep, prep.cfg, layout.micro_batch_tokens if layout else None)
    p["steps_per_epoch"] = math.ceil(len(prep.train_ex) / prep.cfg.batch)
    return prep.cfg, p


def _layout_lines(prep, measure: bool) -> list[str]:
    """The layout training will choose, its forward passes per epoch, and (measure) the
    probe's time and memory."""
    cfg, lines = prep.cfg, list[str]()
    try:
        layout, why = _layout(prep, lines)
    except TrainingError as e:
        return [*lines, f"layout: {e}"]
    tokens = layout.micro_batch_tokens if layout else None
    passes = schedule.passes_per_epoch(cfg, prep.train_ex, tokens)
    lines.append(
        f"layout: {layout.describe() if layout else 'micro-batches as given'} ({why}); "
        f"{passes} forward passes per epoch"
    )
    if measure:
        with torch.enable_grad():
            p = probe(prep, cfg, tokens)
        lines.append(
            f"probe: {p['tokens_per_s']:.0f} tokens/s (padded) → about "
            f"{p['seconds_per_epoch'] / 60:.1f} min per epoch; peak memory "
            f"{p['peak_memory_mb'] / 1024:.2f} GiB "
            f"({'GPU allocated' if torch.cuda.is_available() else 'process RSS'})"
        )
    return lines
