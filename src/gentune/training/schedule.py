"""What a training run computes: how many optimizer steps, the rows of each step, the rows of
each forward pass within it, and the memory layout that bounds those. Training runs these
functions; `gentune plan` calls the same ones, so what it prints is what training will run."""

from __future__ import annotations

import math

from gentune.config import TrainConfig
from gentune.data.encode import length_grouped_batches
from gentune.tokenizer import source_pad_id
from gentune.training import memory
from gentune.training.memory import Layout


def total_steps(cfg: TrainConfig, rows: int) -> int:
    """Optimizer steps of the run: --max-steps, else the epochs' worth of batches of `rows`."""
    return cfg.max_steps or max(1, math.ceil(math.ceil(rows / cfg.batch) * cfg.passes))


def epoch_batches(cfg: TrainConfig, examples, epoch: int) -> list[list[int]]:
    """The micro-batches' rows of one epoch, length-grouped in the run's seeded order; an
    optimizer step takes `cfg.batch // cfg.micro` of them."""
    return length_grouped_batches(
        examples, cfg.micro, seed=cfg.seed, epoch=epoch, group=cfg.group_by_length
    )


def forward_passes(
    examples, group: list[list[int]], tokens: int | None, *, world: int = 1, rank: int = 0
) -> list[list[int]]:
    """The rows of each forward pass of one optimizer step on process `rank`: every
    micro-batch cut into pieces of at most `tokens` padded tokens per process."""

    def length(i: int) -> int:
        return int(examples.lengths[i])

    return [
        piece[rank::world]
        for rows in group
        for piece in memory.split_by_tokens(rows, length, tokens, world)
    ]


def passes_per_epoch(cfg: TrainConfig, examples, tokens: int | None) -> int:
    """Forward passes over the first epoch (one process)."""
    return sum(
        len(forward_passes(examples, [rows], tokens)) for rows in epoch_batches(cfg, examples, 0)
    )


def choose_layout(
    cfg: TrainConfig, prep, *, saved: dict | None, autocast, first_step: bool, world: int, log
) -> tuple[Layout | None, str]:
    """(the layout, why): the run's own on resume (`saved`), else the fastest one a probe finds
    within --memory-budget, else --micro-batch-tokens or its default (None: rows as given)."""
    tokens = cfg.micro_batch_tokens or memory.default_micro_batch_tokens()
    if saved:
        return Layout(**saved), "the run's layout"
    if cfg.memory_budget:
        layout = memory.choose_layout(
            prep.model,
            prep.train_ex,
            cfg,
            tokens=memory.probe_start(cfg, prep.train_ex),
            pad_id=source_pad_id(prep.tokenizer),
            autocast=autocast,
            pending_mb=memory.optimizer_state_mb(prep.n_trainable, cfg.master_weights, cfg.moments)
            if first_step
            else 0.0,
            log=log,
            world=world,
        )
        return layout, f"the fastest that fits --memory-budget {cfg.memory_budget:g} GiB"
    if tokens:
        why = "--micro-batch-tokens" if cfg.micro_batch_tokens else "the CPU default"
        return Layout(tokens, cfg.gradient_checkpointing), why
    return None, "rows as given"
