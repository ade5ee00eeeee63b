"""Everything training needs before its first step, also what `gentune plan` shows: the data
read, split and checked (validation that is training data is warned about), the template, the
examples encoded, the model loaded and wrapped for LoRA."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import memory, recipe
from .config import TrainConfig
from .data import (
    Fields,
    ReadReport,
    fingerprint,
    read_records,
    record_key,
    split_train_val,
)
from .encode import EncodeReport, encode_dataset, pack_examples, with_length_limit
from .errors import TrainingError
from .models import context_length, load_model, wrap_lora
from .tasks import PromptTemplate, build_template, get_task


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(cfg: TrainConfig):
    """(train records, val records, read reports) with the automatic seeded split."""
    task = get_task(cfg.task)
    fields = Fields(
        input=cfg.input_field,
        output=cfg.output_field,
        messages=cfg.messages_field,
        text=cfg.text_field,
    )
    reports = [ReadReport(path=cfg.data)]
    train = read_records(
        cfg.data, kind=task.kind, fields=fields, skip_invalid=cfg.skip_invalid, report=reports[0]
    )
    if cfg.val:
        reports.append(ReadReport(path=cfg.val))
        val = read_records(
            cfg.val, kind=task.kind, fields=fields, skip_invalid=cfg.skip_invalid, report=reports[1]
        )
    else:
        train, val = split_train_val(train, val_fraction=cfg.val_fraction, seed=cfg.seed)
    return train, val, reports


def data_fingerprints(cfg: TrainConfig) -> dict[str, str]:
    """sha256 of the training (and validation) file: what resuming compares, not the paths."""
    return {"data": fingerprint(cfg.data), **({"val": fingerprint(cfg.val)} if cfg.val else {})}


def overlap_warnings(
    cfg: TrainConfig, fingerprints: dict[str, str], train: list, val: list
) -> list[str]:
    """Validation that is (partly) the training data makes its scores optimistic: say so,
    with counts."""
    out = []
    if cfg.val:
        if fingerprints["val"] == fingerprints["data"]:
            out.append(
                f"--val {cfg.val} is the training file --data {cfg.data}: validation "
                "scores will be optimistic; give held-out rows, or leave out --val to "
                "split some off"
            )
            return out
    seen = {record_key(r) for r in train}
    shared = [r.where for r in val if record_key(r) in seen]
    if shared:
        out.append(
            f"{len(shared)} of {len(val)} validation rows also occur in the training "
            f"data (e.g. {', '.join(shared[:3])}): validation scores will be optimistic;"
            " remove the duplicates"
        )
    return out


@dataclass
class Prepared:
    """Everything training needs before its first step (also what `gentune plan` shows)."""

    cfg: TrainConfig  # the settings with every automatic one decided (recipe.resolve)
    choices: list  # recipe.Choice: what was decided, and why
    model: Any
    tokenizer: Any
    template: PromptTemplate
    resolved: str
    max_length: int
    train_records: list
    val_records: list
    train_ex: list
    val_ex: list
    train_report: EncodeReport
    val_report: EncodeReport
    read_reports: list
    n_trainable: int
    n_total: int
    fingerprints: dict  # sha256 of the data files, by role (data, val)

    @property
    def scored_val(self) -> list:
        """Validation records with a reference to score generations against (free text has
        none: its validation is the loss)."""
        return [r for r in self.val_records if self.template.reference(r) is not None]


def prepare(cfg: TrainConfig, *, log=print) -> Prepared:
    """Read and encode the data, load the model, wrap it for LoRA: all before step one."""
    seed_everything(cfg.seed)
    task = get_task(cfg.task)
    train_records, val_records, read_reports = load_data(cfg)
    for rep in read_reports:
        if rep.skipped:
            log(
                f"gentune: {rep.path}: skipped {len(rep.skipped)} invalid rows, e.g. "
                f"{rep.skipped[0]}"
            )
    fingerprints = data_fingerprints(cfg)
    for warning in overlap_warnings(cfg, fingerprints, train_records, val_records):
        log(f"gentune: warning: {warning}")
    model, tokenizer, resolved = load_model(cfg.model)
    template = build_template(
        task,
        tokenizer,
        instruction=cfg.instruction,
        source_lang=cfg.source_lang,
        target_lang=cfg.target_lang,
        system=cfg.system,
        style=cfg.template,
    )
    max_length = min(cfg.max_length, context_length(model))
    train_ex, train_rep = encode_dataset(
        train_records,
        template,
        tokenizer,
        max_length=max_length,
        skip_long_targets=cfg.skip_long_targets,
    )
    val_ex, val_rep = encode_dataset(
        val_records,
        template,
        tokenizer,
        max_length=max_length,
        skip_long_targets=cfg.skip_long_targets,
    )
    log(f"gentune: train: {train_rep.summary()}")
    log(f"gentune: validation: {val_rep.summary()}")
    if not train_ex:
        raise TrainingError("no training examples left after encoding")
    has_references = any(template.reference(r) for r in val_records)
    if cfg.metric not in ("auto", "val_loss") and not has_references:
        raise TrainingError(
            f"--metric {cfg.metric} compares generations with references, and "
            "no validation row has one (free text): use --metric val_loss"
        )
    template = with_length_limit(template, max_length, train_ex)  # the same limit at inference
    if cfg.packing:
        n = len(train_ex)
        train_ex = pack_examples(train_ex, max_length)
        log(f"gentune: packing: {n} examples into {len(train_ex)} rows of <= {max_length}")
    cfg, choices = recipe.resolve(
        cfg,
        n_params=sum(p.numel() for p in model.parameters()),
        n_rows=len(train_ex),
        available_mb=memory.available_memory_mb(),
        has_references=has_references,
    )
    for choice in choices:
        log(f"gentune: {choice.line()}")
    seed_everything(cfg.seed)  # LoRA init does not depend on what loading consumed
    if cfg.method == "lora":
        model = wrap_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
    memory.set_checkpointing(model, cfg.gradient_checkpointing)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    log(f"gentune: {cfg.method}: {n_trainable:,} trainable of {n_total:,} parameters")
    return Prepared(
        cfg,
        choices,
        model,
        tokenizer,
        template,
        resolved,
        max_length,
        train_records,
        val_records,
        train_ex,
        val_ex,
        train_rep,
        val_rep,
        read_reports,
        n_trainable,
        n_total,
        fingerprints,
    )
