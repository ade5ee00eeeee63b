"""Training defaults from the model and the data: the method, AdamW's moments' precision, the
batch size, the learning rate, the number of epochs, and the metric that picks the checkpoint
kept.

Each setting left at `auto` (or unset) is chosen here, with its reason; `train` and `plan`
print the reasons and the manifest records them. A setting the user gives is never changed.
The rules and their numbers were chosen on the `dev` rows of held-out sets
(`bench/defaults.py`) and checked on their `test` rows against TRL (`bench/vs_trl.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

from gentune.config import TrainConfig
from gentune.data.tasks import get_task

# full fine-tuning up to this size, where its weights, gradients and AdamW state fit
FULL_MAX_PARAMETERS = 1_000_000_000
BYTES_PER_FULL_PARAMETER = 16  # fp32 weight + gradient + two AdamW moments
LEARNING_RATE = {"full": 1e-4, "lora": 1e-3}
BATCH_SIZE = 8  # examples per optimizer step
SMALL_BATCH = 4  # ... where one pass in batches of 8 is fewer than MIN_PASS_STEPS steps
MIN_PASS_STEPS = 20  # bench/results/defaults.md: aclsum-summary's 90 rows, 12 vs 23 steps
# ... and whose median target is at least this many tokens: on the dev rows batches of 4 won
# on ACLSum summaries (~100-token targets, +4.5 ROUGE-L) and tied on its titles (~15 tokens,
# -0.14), where a batch of 4 holds some 60 target tokens (docs/benchmarks.md)
LONG_TARGET = 32
MIN_STEPS = 10  # fewer optimizer steps than this over the data: more epochs (up to MAX_EPOCHS)
MAX_EPOCHS = 3
EVAL_GENERATE = 16  # validation rows generated from when the task metric picks the checkpoint


@dataclass(frozen=True)
class Choice:
    setting: str
    value: Any
    reason: str

    def line(self) -> str:
        return (
            f"{self.setting} {self.value:g} ({self.reason})"
            if isinstance(self.value, float)
            else f"{self.setting} {self.value} ({self.reason})"
        )


def choose_method(n_params: int, available_mb: float | None) -> tuple[str, str]:
    """(lora | full, why) from the model's size and the memory there is."""
    size = f"{n_params / 1e6:,.0f}M parameters"
    need = n_params * BYTES_PER_FULL_PARAMETER / 2**20
    if n_params > FULL_MAX_PARAMETERS:
        return "lora", f"{size}, above {FULL_MAX_PARAMETERS / 1e9:g}B: LoRA"
    if available_mb is not None and need > available_mb / 2:
        return "lora", (
            f"{size}: full fine-tuning's weights, gradients and optimizer state "
            f"({need / 1024:.1f} GiB) would take over half the memory available "
            f"({available_mb / 1024:.1f} GiB)"
        )
    return "full", (
        f"{size}: full fine-tuning fits ({need / 1024:.1f} GiB of weights, gradients and "
        "optimizer state) and beat LoRA on held-out data at this size"
    )


def choose_batch_size(
    n_rows: int, median_target: float, micro_batch_size: int | None, world: int = 1
) -> tuple[int, str]:
    """(batch size, why): 8, or 4 where one pass in 8s takes too few optimizer steps and the
    targets are long (and 4 splits into the micro-batches, and those over the processes)."""
    steps = math.ceil(n_rows / BATCH_SIZE)
    if steps >= MIN_PASS_STEPS:
        return BATCH_SIZE, f"{n_rows} rows = {steps} steps of {BATCH_SIZE} a pass"
    if median_target < LONG_TARGET:
        return BATCH_SIZE, (
            f"{n_rows} rows = {steps} steps of {BATCH_SIZE} a pass; targets of "
            f"{median_target:g} tokens (median), under {LONG_TARGET}: smaller batches gained "
            "nothing on short targets"
        )
    small = SMALL_BATCH if SMALL_BATCH % (micro_batch_size or world) == 0 else 0
    if not small:
        why = f"--micro-batch-size {micro_batch_size}" if micro_batch_size else f"{world} processes"
        return BATCH_SIZE, f"{n_rows} rows; {why} keep batches of {BATCH_SIZE}"
    return small, (
        f"{n_rows} rows = {steps} steps of {BATCH_SIZE} a pass, under {MIN_PASS_STEPS}, with "
        f"targets of {median_target:g} tokens (median): batches of {small} for "
        f"{math.ceil(n_rows / small)} steps (small sets with long targets need the steps; "
        "same tokens, about the same time)"
    )


def choose_epochs(n_rows: int, batch_size: int) -> tuple[float, str]:
    """(epochs, why): enough passes for MIN_STEPS optimizer steps, at most MAX_EPOCHS."""
    steps = math.ceil(n_rows / batch_size)
    epochs = min(MAX_EPOCHS, max(1, math.ceil(MIN_STEPS / steps)))
    if epochs == 1:
        return 1.0, f"{n_rows} rows = {steps} steps of {batch_size}: one pass is enough"
    return float(epochs), (
        f"{n_rows} rows = {steps} steps of {batch_size}: {epochs} passes for at least "
        f"{min(MIN_STEPS, epochs * steps)} steps"
        + (f" (at most {MAX_EPOCHS})" if epochs == MAX_EPOCHS else "")
    )


def choose_moments(cfg: TrainConfig, method: str, n_params: int, gpu: bool) -> tuple[str, str]:
    """(AdamW's moments' precision, why): bf16 for full fine-tuning on a CPU, where it cut the
    peak RSS by 4 bytes a parameter at the same quality on the dev rows
    (bench/results/defaults.md); fp32 where it was not measured or saves nothing."""
    if cfg.master_weights == "bf16":
        return "bf16", "as the bf16 master weights"
    if method != "full":
        return "fp32", "LoRA: the adapters' moments are small"
    if cfg.fsdp:
        return "fp32", "--fsdp: FSDP's optimizer keeps fp32 shards"
    if gpu:
        return "fp32", "on a GPU: torch's fused AdamW (bf16 moments were measured on CPUs only)"
    return "bf16", (
        f"full fine-tuning on a CPU: {n_params * 4 / 2**20:,.0f} MiB less than fp32 moments, "
        "the same quality on the dev rows, +0.1 s a step"
    )


def resolve(
    cfg: TrainConfig,
    *,
    n_params: int,
    n_rows: int,
    median_target: float,
    available_mb: float | None,
    has_references: bool,
    world: int = 1,
    gpu: bool = False,
) -> tuple[TrainConfig, list[Choice]]:
    """`cfg` with every automatic setting decided, and the choices made (with reasons)."""
    choices: list[Choice] = []
    method = str(cfg.method)
    if method == "auto":
        method, why = choose_method(n_params, available_mb)
        choices.append(Choice("method", method, why))
    moments = str(cfg.moments)
    if moments == "auto":
        moments, why = choose_moments(cfg, method, n_params, gpu)
        choices.append(Choice("moments", moments, why))
    batch = cfg.batch_size
    if batch is None:
        batch, why = choose_batch_size(n_rows, median_target, cfg.micro_batch_size, world)
        choices.append(Choice("batch_size", batch, why))
    lr = cfg.lr
    if lr is None:
        lr = LEARNING_RATE[method]
        choices.append(Choice("lr", lr, f"the {method} default"))
    epochs = cfg.epochs
    if epochs is None:
        if cfg.max_steps:
            epochs = float(MAX_EPOCHS)  # max_steps decides; epochs only bound it
        else:
            epochs, why = choose_epochs(n_rows, batch)
            choices.append(Choice("epochs", epochs, why))
    validations = (
        math.ceil(epochs)
        if cfg.eval_every is None
        else math.ceil(n_rows / batch * epochs) // cfg.eval_every
    )
    metric, eval_generate = cfg.metric, cfg.eval_generate
    task_metric = get_task(cfg.task).validation_metric if has_references else None
    if metric == "auto":
        if task_metric and validations > 1 and eval_generate != 0:
            metric = task_metric
            why = f"{validations} validations: the best by the task's metric is kept"
        else:
            metric = "val_loss"
            why = (
                "a single validation: nothing to choose between"
                if validations <= 1
                else "no references to score generations against"
                if not task_metric
                else "--eval-generate 0"
            )
        choices.append(Choice("metric", metric, why))
    if eval_generate is None:
        eval_generate = EVAL_GENERATE if metric != "val_loss" else 0
    resolved = replace(
        cfg,
        method=cast(Literal["lora", "full"], method),
        moments=cast(Literal["fp32", "bf16"], moments),
        batch_size=batch,
        lr=lr,
        epochs=epochs,
        metric=metric,
        eval_generate=eval_generate,
    )
    return resolved, choices
