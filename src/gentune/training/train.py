"""The training loop, written out once: batch → forward → loss → backward → clip → step →
schedule → log → validate → checkpoint.

It runs unchanged under `accelerate launch` / `torchrun` (data-parallel): every process builds
the same global batches and takes its share of each micro-batch; the loss is normalised by the
target tokens of the whole global step, so 2 processes give the gradient of 1.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gentune import checkpoint, rundir
from gentune.config import TrainConfig
from gentune.data.encode import collate_for
from gentune.data.records import write_records
from gentune.errors import TrainingError, disk_error, write_failed
from gentune.inference.report import loss_curve_png
from gentune.lock import is_main_rank, locked
from gentune.models.load import resolve_precision
from gentune.models.loss import TargetLoss
from gentune.tokenizer import source_pad_id
from gentune.training import distributed, memory, schedule
from gentune.training.optim import adamw, weights_line
from gentune.training.prepare import Prepared, prepare
from gentune.training.trackers import Trackers
from gentune.training.validation import validate

LOG_FIELDS = [
    "step",
    "epoch",
    "loss",
    "lr",
    "grad_norm",
    "tokens",
    "target_tokens",
    "tokens_per_s",
    "target_tokens_per_s",
    "peak_memory_mb",
    "elapsed_s",
    "val_loss",
    "val_perplexity",
    "val_metric",
]


def accumulate_gradients(
    loss_model,
    micro_batches: list[dict],
    accelerator=None,
    *,
    n_step: int,
    scale: float = 1.0,
) -> tuple[float, int]:
    """Backward over the micro-batches of one optimizer step; returns (Σ nll, target tokens).

    The loss is normalised by the target tokens of the whole step (`n_step`, over all
    processes), not per micro-batch, so accumulating k micro-batches gives the gradient of one
    batch of all their rows. `scale` undoes the averaging of gradients across processes.
    """
    device = next(loss_model.parameters()).device
    inner = getattr(getattr(loss_model, "_orig_mod", loss_model), "model", None)  # (compiled)
    nll_sum = 0.0
    for i, m in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        # gradients are all-reduced (DDP) or reduce-scattered (FSDP) once per step, on the last
        # micro-batch
        sync = accelerator.no_sync(loss_model) if accelerator and not last else nullcontext()
        distributed.gradient_sync(inner, last)
        with sync:
            with accelerator.autocast() if accelerator else nullcontext():
                nll, _ = loss_model(_to(m, device))
            scaled = nll * (scale / n_step)
            if accelerator is not None:
                accelerator.backward(scaled)
            else:
                scaled.backward()
        nll_sum += float(nll.detach())
    return nll_sum, n_step


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch on the model's device: through pinned memory, without waiting, to a GPU."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def _fault(point: str, step: int) -> None:
    """Fault injection for the kill tests: GENTUNE_FAULT=kill-in-save:STEP, kill-after:STEP or
    hang-after:STEP (a process that stops answering), optionally @RANK for one process."""
    spec, _, rank = os.environ.get("GENTUNE_FAULT", "").partition("@")
    if rank and rank != os.environ.get("RANK", "0"):
        return
    if spec == f"kill-{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
    if spec == f"hang-{point}:{step}":
        time.sleep(3600)


def _is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return (
        isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError))
        or "out of memory" in text
        or "can't allocate memory" in text
    )


@dataclass
class Session:
    """A training run set up and ready for its first (or next) step."""

    cfg: TrainConfig
    out: Path
    accelerator: Any
    prep: Prepared
    loss_model: torch.nn.Module  # the model wrapped for Σ nll over targets (and for DDP)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: checkpoint.State
    total_steps: int
    accum: int  # micro-batches per optimizer step
    micro_tokens: int | None  # padded tokens per forward pass at most (None: no cap)
    log: Callable[..., None]
    precision: str  # fp32 | bf16 | fp16 (autocast; fp32 master weights)
    precision_reason: str

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def model(self):
        return self.accelerator.unwrap_model(self.loss_model).model


def _accelerator(precision: str, process_group):
    """The accelerator for a run in `precision` (autocast unless fp32)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed = "no" if precision == "fp32" else precision
    shared = AcceleratorState._shared_state  # accelerate keeps one per process
    if shared and shared.get("_mixed_precision") not in (None, mixed):
        # a second run in this process with another precision (the Python API, tests):
        # accelerate refuses a change; drop its mixed-precision state, keep the processes'
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=mixed, kwargs_handlers=[process_group]
    )


def _state(
    resume_from: Path | None, fingerprints: dict, precision: str, cfg: TrainConfig, log
) -> checkpoint.State:
    """A new run's state, or the checkpoint's on resume: its data must be the same files, its
    precision and AdamW moments are the ones this run continues in (a change is warned about:
    `auto` may decide otherwise on another machine or version)."""
    moments = str(cfg.moments)  # (decided by now)
    if not resume_from:
        return checkpoint.State(data_sha256=fingerprints, precision=precision, moments=moments)
    state = checkpoint.State(**checkpoint.read_state(resume_from))
    changed = sorted(k for k, sha in fingerprints.items() if state.data_sha256.get(k, sha) != sha)
    if changed:
        raise TrainingError(
            f"--resume: the {' and '.join(changed)} file's content differs "
            f"from what {resume_from} was trained on; resume with the "
            "original data, or start again with --overwrite"
        )
    if state.precision not in (None, precision):
        log(
            f"gentune: warning: the run was trained in {state.precision} and continues in "
            f"{precision}: the rest will differ from an uninterrupted run (give "
            f"--precision {state.precision} to keep it)"
        )
        state.precision = precision
    if state.moments is None:  # a checkpoint from before they were recorded: as the weights
        state.moments = cfg.master_weights  # (which a resume cannot change)
    if state.moments != moments:
        log(
            f"gentune: warning: the run's AdamW moments were {state.moments} and continue in "
            f"{moments}: the rest will differ from an uninterrupted run (give --moments "
            f"{state.moments} to keep them)"
        )
        state.moments = moments
    return state


def _check_world(micro: int | None, world: int) -> None:
    if micro and micro % world:
        raise TrainingError(f"micro_batch_size {micro} must be a multiple of the {world} processes")


def setup(cfg: TrainConfig, *, log=print) -> Session:
    """Everything before the first step: the run directory checked, the accelerator, data and
    model, optimizer, schedule, and the state (restored from a checkpoint on --resume)."""
    memory.bound_kernel_cache()  # before the first matmul
    memory.bound_heap()  # before the model is loaded
    out = Path(cfg.out)
    cfg = distributed.launcher_settings(cfg)
    precision, reason = resolve_precision(cfg.precision)
    accelerator = _accelerator(precision, distributed.process_group_kwargs(cfg.dist_timeout))
    main, world = accelerator.is_main_process, accelerator.num_processes
    if not main:
        log = lambda *_: None  # noqa: E731  (logs come from the main process only)
    _check_world(cfg.micro_batch_size, world)  # (the default batch's: once it is chosen)
    # a new run, this run continued, or an old one replaced
    rundir.prepare_out(out, resume=bool(cfg.resume), overwrite=cfg.overwrite, main=main)
    accelerator.wait_for_everyone()
    resume_from = checkpoint.resume_point(cfg, out, log)
    prep = prepare(cfg, log=log, world=world)
    given, cfg = cfg, prep.cfg  # the user's settings; and with the automatic ones decided
    _check_world(cfg.micro, world)
    log(
        f"gentune: precision {precision} ({reason}); {weights_line(cfg.master_weights, cfg.moments)}"
    )
    if main:
        out.mkdir(parents=True, exist_ok=True)
        # not complete until the end: nothing loads an older model from here meanwhile
        (out / "manifest.json").unlink(missing_ok=True)
        rundir.write_json(out / "train_config.json", given.run_settings())  # how to continue it
        if not resume_from and not cfg.val:  # keep the held-out rows to score the run on
            write_records(out / "heldout.jsonl", prep.val_records)

    total_steps = schedule.total_steps(cfg, len(prep.train_ex))
    state = _state(resume_from, prep.fingerprints, precision, cfg, log)
    prep.model.to(accelerator.device)  # before the memory probe, which measures the device's
    micro_tokens = fit_memory(cfg, prep, state, accelerator, log)
    if cfg.fsdp:
        if world == 1:
            log("gentune: --fsdp with one process: nothing to shard, training as usual")
        else:
            n = distributed.shard(prep.model, precision)
            log(f"gentune: FSDP2 over {world} processes: {n} layers sharded one by one")
    # the optimizer after sharding: FSDP replaces the parameters by their shards
    optimizer, scheduler = _optimizer(cfg, prep.model, total_steps)
    if resume_from:
        checkpoint.load(resume_from, model=prep.model, optimizer=optimizer, scheduler=scheduler)
        log(f"gentune: resumed from {resume_from} (step {state.step})")
    loss_model: Any = TargetLoss(prep.model)
    if cfg.compile:
        loss_model = torch.compile(loss_model)
    if distributed.sharded(prep.model):  # (DDP would wrap it again)
        optimizer = accelerator.prepare(optimizer)
    else:
        loss_model, optimizer = accelerator.prepare(loss_model, optimizer)
    prep.model.train()
    return Session(
        cfg,
        out,
        accelerator,
        prep,
        loss_model,
        optimizer,
        scheduler,
        state,
        total_steps,
        cfg.batch // cfg.micro,
        micro_tokens,
        log,
        precision,
        reason,
    )


def _optimizer(cfg: TrainConfig, model, total_steps: int):
    """(AdamW over the trainable parameters, in the run's master weights; its schedule)."""
    from transformers import get_scheduler

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(
        trainable,
        master=cfg.master_weights,
        moments=cfg.moments,
        seed=cfg.seed,
        lr=cfg.peak_lr,
        weight_decay=cfg.weight_decay,
    )
    scheduler = get_scheduler(
        "constant_with_warmup" if cfg.scheduler == "constant" else cfg.scheduler,
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    return optimizer, scheduler


def fit_memory(
    cfg: TrainConfig, prep: Prepared, state: checkpoint.State, accelerator, log
) -> int | None:
    """Padded tokens per forward pass (and gradient checkpointing, set on the model), as
    `schedule.choose_layout` decides; kept in the state, so a resume runs the same layout."""
    layout, why = schedule.choose_layout(
        cfg,
        prep,
        saved=state.layout,
        autocast=accelerator.autocast,
        first_step=not state.step,
        world=accelerator.num_processes,
        log=log,
    )
    if layout is None:
        return None
    memory.set_checkpointing(prep.model, layout.gradient_checkpointing)
    state.layout = asdict(layout)
    log(f"gentune: {layout.describe()} ({why})")
    return layout.micro_batch_tokens


class RunLog:
    """metrics.csv (one row per step; a resumed run rewrites the rows it had and goes on) and
    TensorBoard when it is installed; on the main process only."""

    SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "val_loss", "val_metric")

    def __init__(
        self,
        out: Path,
        history: list[dict],
        *,
        enabled: bool,
        tensorboard: bool,
        trackers: Trackers | None = None,
    ):
        self.file = self.writer = self.tb = None
        self.out, self.trackers = out, trackers
        if not enabled:
            self.trackers = None
            return
        self.file = (out / "metrics.csv").open("w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=LOG_FIELDS)
        self.writer.writeheader()
        self.writer.writerows(history)
        self.file.flush()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                self.tb = None

    def write(self, row: dict) -> None:
        if self.writer is None or self.file is None:
            return
        self.writer.writerow(row)
        self.file.flush()
        if self.trackers:
            self.trackers.write(row)
        if self.tb:
            for k in self.SCALARS:
                if k in row:
                    self.tb.add_scalar(f"train/{k}", row[k], row["step"])

    def samples(self, samples: list[dict], step: int) -> None:
        """RUN/samples.jsonl with every validation's samples so far (rewritten whole: atomic,
        and a resumed run's file is its checkpoint's); this step's as TensorBoard text."""
        if self.writer is None or not samples:
            return
        rundir.write_jsonl(self.out / rundir.SAMPLES, samples)
        if self.trackers:
            self.trackers.samples([s for s in samples if s["step"] == step], step)
        if self.tb:
            for s in samples:
                if s["step"] == step:
                    self.tb.add_text(
                        f"samples/row {s['row']}",
                        f"**output:** {s['output']}\n\n**reference:** {s['reference']}",
                        step,
                    )

    def close(self) -> None:
        if self.trackers:
            self.trackers.close()
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


def save_checkpoint(s: Session) -> None:
    """Checkpoint the current step (every process writes its shards), keeping the last K and
    the best."""
    state = s.state
    with _disk_guard(s, f"the checkpoint of step {state.step}"):
        _save(s, state)


def _save(s: Session, state) -> None:
    checkpoint.save(
        s.out,
        state.step,
        model=s.model,
        optimizer=s.optimizer,
        scheduler=s.scheduler,
        state=vars(state),
        keep_last=s.cfg.keep_last,
        keep=(state.best_step,),
        crash_hook=lambda point: _fault("in-" + point, state.step),
        main=s.main,
    )


def optimizer_step(s: Session, group: list[list[int]]) -> tuple[float, float, int]:
    """Forward and backward over the step's micro-batches, clip, check, apply; returns (loss per
    target token, gradient norm, target tokens). A NaN loss or gradient stops the run before the
    step is applied; running out of memory says what to change."""
    cfg, state, train_ex, acc = s.cfg, s.state, s.prep.train_ex, s.accelerator
    rank, world = acc.process_index, s.world
    # every process sees the global micro-batches; it trains on its share of the rows
    n_step = int(sum(train_ex.n_targets[b].sum() for b in group))
    collate_fn = collate_for(cfg.packing)
    micro = [
        collate_fn(train_ex.take(rows), source_pad_id(s.prep.tokenizer))
        for rows in schedule.forward_passes(train_ex, group, s.micro_tokens, world=world, rank=rank)
    ]
    try:
        nll_sum, _ = accumulate_gradients(s.loss_model, micro, acc, n_step=n_step, scale=world)
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if not _is_oom(e):
            raise
        raise TrainingError(
            f"out of memory at step {state.step + 1} (micro-batch of {cfg.micro} rows, "
            f"up to {max(int(train_ex.lengths[i]) for b in group for i in b)} tokens)"
            "; try a smaller --micro-batch-tokens or --micro-batch-size (accumulation keeps the "
            "batch), --gradient-checkpointing, --method lora, or a lower --max-length"
        ) from None
    if world > 1:
        nll_sum = float(acc.reduce(torch.tensor(nll_sum, device=acc.device), reduction="sum"))
    loss = nll_sum / n_step
    grad_norm = (
        float(distributed.local(acc.clip_grad_norm_(s.loss_model.parameters(), cfg.max_grad_norm)))
        if cfg.max_grad_norm > 0
        else float("nan")
    )
    if not math.isfinite(loss) or (cfg.max_grad_norm > 0 and not math.isfinite(grad_norm)):
        last = checkpoint.latest(s.out)
        raise TrainingError(
            f"loss became {loss} (gradient norm {grad_norm}) at step {state.step + 1}; "
            "this step was not applied and nothing after it saved. "
            + (
                f"The last good checkpoint is {last}: lower --lr and continue with --resume."
                if last
                else "No checkpoint was written yet: lower --lr (and consider --save-every)."
            )
        )
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm, n_step


# called after each validation with (the step's log row: step, epoch…; the value the best
# checkpoint is chosen by); True stops the run there as early stopping does (a sweep's pruner)
OnValidation = Callable[[dict, float], bool]


def train(cfg: TrainConfig, *, log=print, on_validation: OnValidation | None = None) -> Path:
    """Fine-tune per `cfg`; returns the run directory. The loop: batch → forward → loss →
    backward → clip → step → schedule → log → validate → checkpoint. Under several processes,
    another one's failure ends this one with a line that says so (not a hang)."""
    started = time.time()
    with locked(cfg.out, enabled=is_main_rank()):  # one writer per run directory
        s = setup(cfg, log=log)
        try:
            return loop(s, started, on_validation)
        except Exception as e:
            failure = distributed.collective_failure(e, s.cfg, s.accelerator.process_index)
            if s.world > 1 and failure is not None:
                raise failure from None
            raise


def loop(s: Session, started: float, on_validation: OnValidation | None = None) -> Path:
    """The training loop over a set-up session, then the run directory written."""
    cfg = s.cfg  # with the automatic settings decided
    state, train_ex = s.state, s.prep.train_ex
    run_log = RunLog(
        s.out, state.history, enabled=s.main, tensorboard=cfg.tensorboard, trackers=_trackers(s)
    )
    bar = _progress_bar(s)
    saved_step = state.step or None  # a resumed run's step is saved already
    t0 = time.time() - (state.history[-1]["elapsed_s"] if state.history else 0.0)
    tokens_done = sum(r["tokens"] for r in state.history)
    targets_done = sum(r["target_tokens"] for r in state.history)
    stopped_by = None
    while state.step < s.total_steps and not state.stopped_early:
        batches = schedule.epoch_batches(cfg, train_ex, state.epoch)
        while (
            state.next_batch < len(batches)
            and state.step < s.total_steps
            and not state.stopped_early
        ):
            group = batches[state.next_batch : state.next_batch + s.accum]
            loss, grad_norm, n_step = optimizer_step(s, group)
            state.step += 1
            state.next_batch += len(group)
            elapsed = time.time() - t0
            n_tokens = int(sum(train_ex.lengths[b].sum() for b in group))
            tokens_done += n_tokens
            targets_done += n_step
            row = {
                "step": state.step,
                "epoch": round(state.epoch + state.next_batch / len(batches), 4),
                "loss": round(loss, 6),
                "lr": s.scheduler.get_last_lr()[0],
                "grad_norm": round(grad_norm, 6),
                "tokens": n_tokens,
                "target_tokens": n_step,
                "tokens_per_s": round(tokens_done / max(elapsed, 1e-9), 1),
                "target_tokens_per_s": round(targets_done / max(elapsed, 1e-9), 1),
                "peak_memory_mb": round(memory.peak_memory_mb(), 1),
                "elapsed_s": round(elapsed, 3),
            }
            end_of_epoch = state.next_batch >= len(batches)
            due = (state.step % cfg.eval_every == 0) if cfg.eval_every else end_of_epoch
            if due or state.step == s.total_steps:
                value = validate(
                    s.prep, state, row, world=s.world, log=s.log, autocast=s.accelerator.autocast
                )
                run_log.samples(state.samples, state.step)
                if on_validation and value is not None and on_validation(row, value):
                    state.stopped_early, stopped_by = True, "the sweep's pruner"
            state.history.append(row)
            run_log.write(row)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            bar.update(1)
            if end_of_epoch:  # the next step starts the next epoch's batch order
                state.epoch, state.next_batch = state.epoch + 1, 0
            if (
                (cfg.save_every and state.step % cfg.save_every == 0)
                or state.best_step == state.step
                or state.step == s.total_steps
                or state.stopped_early
            ):
                save_checkpoint(s)
                saved_step = state.step
            _fault("after", state.step)
            if end_of_epoch:
                break
    bar.close()
    run_log.close()
    if state.stopped_early:
        why = stopped_by or f"{cfg.patience} validations without improvement"
        s.log(f"gentune: early stop at step {state.step}: {why}; best {_best(s)}")
    if saved_step != state.step:  # e.g. resumed from the final checkpoint
        save_checkpoint(s)
    return finish(s, started=started, t0=t0)


def _trackers(s: Session) -> Trackers | None:
    """--report-to's trackers, started with the run's settings (the main process only)."""
    names = [t.strip() for t in s.cfg.report_to.split(",") if t.strip() not in ("", "none")]
    if not names or not s.main:
        return None
    trackers = Trackers(
        names, out=s.out, project=s.cfg.tracker_project, directory=s.cfg.tracker_dir, log=s.log
    )
    trackers.start({**s.cfg.run_settings(), "decided": [c.line() for c in s.prep.choices]})
    return trackers


def _progress_bar(s: Session):
    from tqdm.auto import tqdm

    return tqdm(
        total=s.total_steps,
        initial=s.state.step,
        desc="train",
        unit="step",
        disable=not (s.cfg.progress and s.main),
        dynamic_ncols=True,
    )


def _best(s: Session) -> str:
    return f"{s.cfg.metric} {s.state.best:.4f} at step {s.state.best_step}"


@contextlib.contextmanager
def _disk_guard(s: Session, what: str):
    """A write that fails for lack of room or rights ends training with one line: the path,
    what was being written, and the complete checkpoint `--resume` continues from."""
    try:
        yield
    except BaseException as e:  # torch's CheckpointException is a BaseException
        disk = None if isinstance(e, KeyboardInterrupt | SystemExit) else disk_error(e)
        if disk is None:
            raise
        last = checkpoint.latest(s.out)
        after = (
            f"the last complete checkpoint ({last.name}) is intact: make room, then continue "
            f"with `{rundir.resume_hint(s.out)}`"
            if last
            else f"no checkpoint was complete yet: make room, then run again ({s.out})"
        )
        raise write_failed(disk, what, s.out, after) from None


def finish(s: Session, *, started: float, t0: float) -> Path:
    """Write the run directory: the best (or last) weights, template, settings, loss curve, and
    the manifest last, which marks the run complete."""
    cfg, state = s.cfg, s.state
    model, final_step = s.model, state.step
    if cfg.final_model == "best" and state.best_step not in (None, state.step):
        checkpoint.load(
            checkpoint.root(s.out) / f"{checkpoint.PREFIX}{state.best_step:08d}", model=model
        )
        final_step = state.best_step
        s.log(f"gentune: the run's model is the best checkpoint (step {state.best_step})")
    # a sharded model's full weights, gathered from every process
    weights = distributed.full_weights(model, trainable_only=cfg.method == "lora")
    if s.main:
        val_rows = [r for r in state.history if "val_loss" in r]
        with _disk_guard(s, "the run's final model"):
            loss_curve_png(state.history, s.out / "loss.png")
            _save_run(s, model, weights, val_rows, started, t0, final_step)
        s.log(f"gentune: saved run to {s.out}")
    s.accelerator.wait_for_everyone()
    return s.out


def _save_run(s: Session, model, weights, val_rows, started, t0, final_step) -> None:
    """The run directory's files, the manifest last (see `finish`)."""
    cfg, state, prep = s.cfg, s.state, s.prep
    rundir.save_run(
        s.out,
        model=model,
        weights=weights,
        tokenizer=prep.tokenizer,
        template=prep.template,
        run={"method": cfg.method, "task": cfg.task, "base_model": cfg.model, "seed": cfg.seed},
        base_model=prep.resolved,
        data_files={
            role: (prep.sources.paths[role], sha) for role, sha in prep.fingerprints.items()
        },
        stats={
            "train": vars(prep.train_report),
            "validation": vars(prep.val_report),
            "read": [vars(r) for r in prep.read_reports],
            "mix": prep.sources.mix.files if prep.sources.mix else None,
            "steps": state.step,
            "model_step": final_step,
            "max_length": prep.max_length,
            "processes": s.world,
            "target_tokens_p50": prep.template.target_tokens,
            "target_tokens_p99": prep.template.target_p99,
            "precision": s.precision,
            "precision_reason": s.precision_reason,
            "packing": cfg.packing,
            "choices": [vars(c) for c in prep.choices],
            "lr": cfg.lr,
            "epochs": cfg.epochs,
            "metric": cfg.metric,
            "micro_batch_tokens": s.micro_tokens,
            "gradient_checkpointing": (state.layout or {}).get(
                "gradient_checkpointing", cfg.gradient_checkpointing
            ),
            "best_checkpoint": (
                f"checkpoints/{checkpoint.PREFIX}{state.best_step:08d}"
                if state.best_step is not None
                else None
            ),
            "best_metric": {cfg.metric: state.best} if state.best is not None else None,
            "stopped_early": state.stopped_early,
            "trainable_parameters": prep.n_trainable,
            "total_parameters": prep.n_total,
            "final_train_loss": state.history[-1]["loss"] if state.history else None,
            "final_val_loss": val_rows[-1]["val_loss"] if val_rows else None,
            "final_val_perplexity": val_rows[-1]["val_perplexity"] if val_rows else None,
            "train_seconds": round(time.time() - t0, 2),
            "total_seconds": round(time.time() - started, 2),
        },
    )
