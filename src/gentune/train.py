"""The training loop, written out once: batch → forward → loss → backward → clip → step →
schedule → log → eval → save."""

from __future__ import annotations

import csv
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from . import runs
from .config import TrainConfig
from .data import Fields, ReadReport, read_records, split_train_val, write_records
from .encode import collate, encode_dataset, length_grouped_batches
from .models import load_model, token_nll, wrap_lora
from .tasks import build_template, get_task

LOG_FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "tokens", "target_tokens",
              "tokens_per_s", "target_tokens_per_s", "elapsed_s", "val_loss", "val_perplexity"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(cfg: TrainConfig):
    """(train records, val records, read reports) with the automatic seeded split."""
    task = get_task(cfg.task)
    fields = Fields(input=cfg.input_field, output=cfg.output_field,
                    messages=cfg.messages_field, text=cfg.text_field)
    reports = [ReadReport(path=cfg.data)]
    train = read_records(cfg.data, kind=task.kind, fields=fields,
                         skip_invalid=cfg.skip_invalid, report=reports[0])
    if cfg.val:
        reports.append(ReadReport(path=cfg.val))
        val = read_records(cfg.val, kind=task.kind, fields=fields,
                           skip_invalid=cfg.skip_invalid, report=reports[1])
    else:
        train, val = split_train_val(train, val_fraction=cfg.val_fraction, seed=cfg.seed)
    return train, val, reports


@torch.no_grad()
def evaluate_loss(model, examples, pad_id: int, batch_size: int) -> tuple[float, float]:
    """(mean loss per target token, perplexity) = exp(Σ nll / Σ target tokens)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for i in range(0, len(order), batch_size):
        batch = collate([examples[j] for j in order[i:i + batch_size]], pad_id)
        nll, n = token_nll(model, batch)
        total += float(nll)
        count += n
    model.train(was_training)
    loss = total / max(count, 1)
    return loss, math.exp(min(loss, 50.0))


def accumulate_gradients(model, micro_batches: list[dict], accelerator=None) -> tuple[float, int]:
    """Backward over the micro-batches of one optimizer step; returns (loss, target tokens).

    The loss is normalised by the target tokens of the whole step, not per micro-batch, so
    accumulating k micro-batches gives the same gradient as one batch of all their rows.
    """
    n_step = sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro_batches)
    device = next(model.parameters()).device
    loss_sum = 0.0
    for m in micro_batches:
        nll, _ = token_nll(model, {k: v.to(device) for k, v in m.items()})
        scaled = nll / n_step
        if accelerator is not None:
            accelerator.backward(scaled)
        else:
            scaled.backward()
        loss_sum += float(nll.detach())
    return loss_sum / n_step, n_step


def train(cfg: TrainConfig, *, log=print) -> Path:
    """Fine-tune per `cfg`; returns the run directory."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    started = time.time()
    out = Path(cfg.out)
    seed_everything(cfg.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    task = get_task(cfg.task)

    train_records, val_records, read_reports = load_data(cfg)
    for rep in read_reports:
        if rep.skipped:
            log(f"gentune: {rep.path}: skipped {len(rep.skipped)} invalid rows, e.g. "
                f"{rep.skipped[0]}")
    model, tokenizer, resolved = load_model(cfg.model)
    template = build_template(task, tokenizer, instruction=cfg.instruction,
                              source_lang=cfg.source_lang, target_lang=cfg.target_lang,
                              system=cfg.system, style=cfg.template)
    from .models import context_length

    max_length = min(cfg.max_length, context_length(model))
    train_ex, train_rep = encode_dataset(train_records, template, tokenizer,
                                         max_length=max_length,
                                         skip_long_targets=cfg.skip_long_targets)
    val_ex, val_rep = encode_dataset(val_records, template, tokenizer, max_length=max_length,
                                     skip_long_targets=cfg.skip_long_targets)
    if not cfg.val:  # keep the held-out rows, so the run can be scored on exactly them
        out.mkdir(parents=True, exist_ok=True)
        write_records(out / "heldout.jsonl", val_records)
    log(f"gentune: train: {train_rep.summary()}")
    log(f"gentune: validation: {val_rep.summary()}")
    if not train_ex:
        raise ValueError("no training examples left after encoding")

    seed_everything(cfg.seed)  # LoRA init does not depend on what loading consumed
    if cfg.method == "lora":
        model = wrap_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    log(f"gentune: {cfg.method}: {n_trainable:,} trainable of {n_total:,} parameters")

    accum = cfg.batch_size // cfg.micro
    steps_per_epoch = math.ceil(len(train_ex) / cfg.batch_size)
    total_steps = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    optimizer = torch.optim.AdamW(trainable, lr=cfg.peak_lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        "constant_with_warmup" if cfg.scheduler == "constant" else cfg.scheduler, optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps), num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    out.mkdir(parents=True, exist_ok=True)
    pad_id = tokenizer.pad_token_id
    log_path = out / "metrics.csv"
    log_file = log_path.open("w", newline="")
    writer = csv.DictWriter(log_file, fieldnames=LOG_FIELDS)
    writer.writeheader()
    bar = tqdm(total=total_steps, desc="train", unit="step", disable=not cfg.progress,
               dynamic_ncols=True)
    step, epoch, t0 = 0, 0, time.time()
    history: list[dict] = []
    while step < total_steps:
        batches = length_grouped_batches(train_ex, cfg.micro, seed=cfg.seed, epoch=epoch)
        for first in range(0, len(batches), accum):
            if step >= total_steps:
                break
            group = batches[first:first + accum]
            micro = [collate([train_ex[i] for i in b], pad_id) for b in group]
            loss, n_step = accumulate_gradients(model, micro, accelerator)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step + 1}; lower --lr "
                                         "(nothing was saved for this run)")
            grad_norm = (float(accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm))
                         if cfg.max_grad_norm > 0 else float("nan"))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            elapsed = time.time() - t0
            n_tokens = sum(int(m["attention_mask"].sum()) for m in micro)
            row = {"step": step, "epoch": round(epoch + (first + len(group)) / len(batches), 4),
                   "loss": round(loss, 6), "lr": scheduler.get_last_lr()[0],
                   "grad_norm": round(grad_norm, 6), "tokens": n_tokens,
                   "target_tokens": n_step, "elapsed_s": round(elapsed, 3)}
            history.append(row)
            done = sum(r["tokens"] for r in history)
            row["tokens_per_s"] = round(done / max(elapsed, 1e-9), 1)
            row["target_tokens_per_s"] = round(sum(r["target_tokens"] for r in history)
                                               / max(elapsed, 1e-9), 1)
            end_of_epoch = first + accum >= len(batches) or step == total_steps
            if end_of_epoch and cfg.eval_every_epoch and val_ex:
                row["val_loss"], row["val_perplexity"] = evaluate_loss(
                    model, val_ex, pad_id, cfg.micro)
                log(f"gentune: step {step}: val loss {row['val_loss']:.4f}, "
                    f"perplexity {row['val_perplexity']:.2f}")
            writer.writerow(row)
            log_file.flush()
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            bar.update(1)
        epoch += 1
    bar.close()
    log_file.close()

    last = history[-1] if history else {}
    if "val_loss" in last:  # the last step was validated already
        final_val = (last["val_loss"], last["val_perplexity"])
    else:
        final_val = evaluate_loss(model, val_ex, pad_id, cfg.micro) if val_ex else (None, None)
    model = accelerator.unwrap_model(model)
    runs.save_run(
        out, model=model, tokenizer=tokenizer, template=template, cfg=cfg,
        base_model=resolved, data_files=[cfg.data] + ([cfg.val] if cfg.val else []),
        stats={
            "train": vars(train_rep), "validation": vars(val_rep),
            "read": [vars(r) for r in read_reports],
            "steps": step, "epochs_run": epoch, "max_length": max_length,
            "trainable_parameters": n_trainable, "total_parameters": n_total,
            "final_train_loss": history[-1]["loss"] if history else None,
            "final_val_loss": final_val[0], "final_val_perplexity": final_val[1],
            "train_seconds": round(time.time() - t0, 2),
            "total_seconds": round(time.time() - started, 2),
        },
    )
    log(f"gentune: saved run to {out}")
    return out


def read_log(run_dir: str | Path) -> list[dict]:
    with (Path(run_dir) / "metrics.csv").open() as f:
        return list(csv.DictReader(f))
