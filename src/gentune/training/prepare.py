"""Everything training needs before its first step, also what `gentune plan` shows: the model
loaded, the template, the data read, checked and encoded once into the data cache (`cache`),
split (validation that is training data is warned about), the model wrapped for LoRA."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gentune.config import TrainConfig
from gentune.data import cache, mix
from gentune.data.encode import EncodeReport, Examples, pack_examples, with_length_limit
from gentune.data.records import Fields, ReadReport, Record, split_indices
from gentune.data.tasks import PromptTemplate, build_template, get_task
from gentune.errors import ConfigError, TrainingError
from gentune.models.families import (
    CROSS_ATTENTION,
    WARM_START,
    is_seq2seq,
    set_languages,
    template_options,
)
from gentune.models.load import context_length, load_model, wrap_lora
from gentune.training import memory, recipe


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def data_fields(cfg: TrainConfig) -> Fields:
    """The column names the data files use."""
    return Fields(
        input=cfg.input_field,
        output=cfg.output_field,
        messages=cfg.messages_field,
        text=cfg.text_field,
    )


def load_data(cfg: TrainConfig, template: PromptTemplate, tokenizer, max_length: int, *, log):
    """(training part, validation part, read reports, `Sources`): the files from the data
    cache (encoded into it on first use), validation split off the first --data file by a
    seeded draw unless --val is given, several --data files mixed at their weights."""
    fields = data_fields(cfg)

    def encoded(path: str) -> cache.Encoded:
        return cache.encode_file(
            path,
            kind=get_task(cfg.task).kind,
            fields=fields,
            template=template,
            tokenizer=tokenizer,
            max_length=max_length,
            skip_invalid=cfg.skip_invalid,
            progress=cfg.progress,
            log=log,
        )

    def part(enc: cache.Encoded, recs) -> cache.Part:
        return enc.part(
            np.asarray(recs, dtype=np.int64),
            max_length=max_length,
            skip_long_targets=cfg.skip_long_targets,
        )

    paths = [path for path, _ in cfg.data_files]
    data = encoded(paths[0])
    more = [encoded(path) for path in paths[1:]]
    # roles: the first --data file, the others (data:2, ...), --val
    roles = {"data": paths[0], **{f"data:{i}": p for i, p in enumerate(paths[1:], 2)}}
    files = [data, *more]
    if cfg.val:
        files.append(encoded(cfg.val))
        roles["val"] = cfg.val
        train, val = part(data, range(data.n_records)), part(files[-1], range(files[-1].n_records))
    else:
        train_recs, val_recs = split_indices(
            data.n_records, val_fraction=cfg.val_fraction, seed=cfg.seed, source=paths[0]
        )
        train, val = part(data, train_recs), part(data, val_recs)
    reports = [ReadReport(path=f.source, rows=f.info["rows"], skipped=f.skipped) for f in files]
    fingerprints = {role: f.sha256 for role, f in zip(roles, files, strict=True)}
    drawn = None
    if more:
        parts = [train, *(part(e, range(e.n_records)) for e in more)]
        weights = [w for _, w in cfg.data_files]
        examples, drawn = mix.mix([p.examples for p in parts], paths, weights, cfg.seed)
        train = cache.Part(
            examples,  # type: ignore[arg-type]
            mix.ChainedRecords([p.records for p in parts]),  # type: ignore[arg-type]
            mix.merged_report([p.report for p in parts], examples=len(examples)),
            np.concatenate([p.keys for p in parts]),
        )
    return train, val, reports, Sources(fingerprints, roles, drawn)


@dataclass(frozen=True)
class Sources:
    """The data files a run reads: their sha256 and paths by role, and the mix drawn from
    several --data files (None for one)."""

    fingerprints: dict[str, str]
    paths: dict[str, str]
    mix: mix.Mix | None


def overlap_warnings(
    cfg: TrainConfig, fingerprints: dict[str, str], train: cache.Part, val: cache.Part
) -> list[str]:
    """Validation that is (partly) the training data makes its scores optimistic: say so,
    with counts."""
    out = []
    if cfg.val:
        if fingerprints["val"] == fingerprints["data"]:
            out.append(
                f"--val {cfg.val} is the training file --data {cfg.data_files[0][0]}: validation "
                "scores will be optimistic; give held-out rows, or leave out --val to "
                "split some off"
            )
            return out
    shared = np.flatnonzero(np.isin(val.keys, train.keys))
    if len(shared):
        out.append(
            f"{len(shared)} of {len(val.records)} validation rows also occur in the training "
            f"data (e.g. {', '.join(val.records[int(i)].where for i in shared[:3])}): "
            "validation scores will be optimistic; remove the duplicates"
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
    train_records: Sequence[Record]  # read from the data cache when asked for
    val_records: Sequence[Record]
    train_ex: Examples  # the training rows: cached examples, or packed from them
    val_ex: Examples
    train_report: EncodeReport
    val_report: EncodeReport
    read_reports: list
    n_trainable: int
    n_total: int
    fingerprints: dict  # sha256 of the data files, by role (data, data:2, ..., val)
    sources: Sources  # the data files' paths by role, and the mix

    @property
    def scored_val(self) -> list:
        """Validation records with a reference to score generations against (free text has
        none: its validation is the loss)."""
        return [r for r in self.val_records if self.template.reference(r) is not None]


def _log_data(cfg: TrainConfig, read_reports, sources, train, val, log) -> None:
    """What reading and encoding did: skipped rows, overlaps, the mix, the encode summaries."""
    for rep in read_reports:
        if rep.skipped:
            log(
                f"gentune: {rep.path}: skipped {len(rep.skipped)} invalid rows, e.g. "
                f"{rep.skipped[0]}"
            )
    for warning in overlap_warnings(cfg, sources.fingerprints, train, val):
        log(f"gentune: warning: {warning}")
    for line in sources.mix.lines() if sources.mix else []:
        log(f"gentune: {line}")
    log(f"gentune: train: {train.report.summary()}")
    log(f"gentune: validation: {val.report.summary()}")


def _trainable(cfg: TrainConfig, model, log):
    """(the model with LoRA adapters where the method is lora, trainable and all parameters)."""
    seed_everything(cfg.seed)  # LoRA init does not depend on what loading consumed
    if cfg.method == "lora":
        # a warm start's cross-attention is new: trained in full, adapters on the rest
        new = CROSS_ATTENTION if cfg.model.startswith(WARM_START) else ()
        model = wrap_lora(
            model,
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            new=new,
            targets=cfg.lora_targets,
        )
    memory.set_checkpointing(model, cfg.gradient_checkpointing)
    if cfg.master_weights == "bf16":
        model.to(torch.bfloat16)  # trained in bf16 (training/optim.py rounds its updates)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    log(f"gentune: {cfg.method}: {n_trainable:,} trainable of {n_total:,} parameters")
    return model, n_trainable, n_total


def prepare(cfg: TrainConfig, *, log=print, world: int = 1) -> Prepared:
    """Load the model, read and encode the data (through the data cache), wrap the model for
    LoRA: all before step one. `world`: the training processes (the default batch splits
    over them)."""
    seed_everything(cfg.seed)
    task = get_task(cfg.task)
    model, tokenizer, resolved = load_model(cfg.model)
    set_languages(model, tokenizer, cfg.source_lang, cfg.target_lang)  # (multilingual only)
    template = build_template(
        task,
        tokenizer,
        instruction=cfg.instruction,
        source_lang=cfg.source_lang,
        target_lang=cfg.target_lang,
        system=cfg.system,
        style=cfg.template,
        **template_options(model),
    )
    if cfg.packing and is_seq2seq(model):
        raise ConfigError(
            f"--packing: {cfg.model} is an encoder-decoder, whose sources and targets go to "
            "two stacks and cannot be packed into one row; drop --packing (batches are "
            "length-grouped, so little is padded)"
        )
    max_length = min(cfg.max_length, context_length(model))
    train, val, read_reports, sources = load_data(cfg, template, tokenizer, max_length, log=log)
    fingerprints = sources.fingerprints
    _log_data(cfg, read_reports, sources, train, val, log)
    train_records, val_records = train.records, val.records
    train_ex, val_ex = train.examples, val.examples
    train_rep, val_rep = train.report, val.report
    if not len(train_ex):
        raise TrainingError("no training examples left after encoding")
    has_references = any(template.reference(r) for r in val_records)  # (stops at the first)
    if cfg.metric not in ("auto", "val_loss") and not has_references:
        raise TrainingError(
            f"--metric {cfg.metric} compares generations with references, and "
            "no validation row has one (free text): use --metric val_loss"
        )
    template = with_length_limit(template, max_length, train_ex)  # the same limit at inference
    median_target = float(np.median(train_ex.n_targets))  # (of the rows, before packing)
    if cfg.packing:
        n = len(train_ex)
        train_ex = pack_examples(train_ex, max_length)  # (its `.examples`: the unpacked ones)
        log(f"gentune: packing: {n} examples into {len(train_ex)} rows of <= {max_length}")
    cfg, choices = recipe.resolve(
        cfg,
        n_params=sum(p.numel() for p in model.parameters()),
        n_rows=len(train_ex),
        median_target=median_target,
        available_mb=memory.available_memory_mb(),
        has_references=has_references,
        world=world,
        gpu=torch.cuda.is_available(),
    )
    for choice in choices:
        log(f"gentune: {choice.line()}")
    model, n_trainable, n_total = _trainable(cfg, model, log)
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
        sources,
    )
