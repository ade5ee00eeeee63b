"""Checkpoints that survive kills, and exact resume.

    RUN/checkpoints/step-00000012/
      trainable.safetensors   the trainable parameters (LoRA adapter or all weights)
      optimizer.pt            AdamW state
      scheduler.pt            learning-rate schedule state
      rng.pt                  python, numpy and torch RNG states
      state.json              step, position in the data order, log rows, early-stopping state

A checkpoint is written into a temporary directory and renamed into place; `state.json` is
written last, so a directory named step-N always holds a complete checkpoint and a kill in the
middle of a save leaves only a `.tmp-*` directory, which is never picked and is cleaned up.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"


def root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters()
            if p.requires_grad}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: str | Path, step: int, *, model, optimizer, scheduler, state: dict,
         keep_last: int, keep: tuple[int, ...] = (), crash_hook=None) -> Path:
    """Write checkpoint `step` atomically, then prune to the last `keep_last` plus `keep`."""
    ckpts = root(run_dir)
    ckpts.mkdir(parents=True, exist_ok=True)
    final = ckpts / f"{PREFIX}{step:08d}"
    tmp = ckpts / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(trainable_state(model), tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if crash_hook:
        crash_hook("save")  # tests kill the process here, mid-save
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    with (tmp / "state.json").open("w") as f:
        json.dump({**state, "step": step}, f, default=str)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():  # a checkpoint of the same step from an earlier attempt
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(ckpts)
    prune(run_dir, keep_last=keep_last, keep=keep)
    return final


def complete(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (half-written ones are never listed)."""
    ckpts = root(run_dir)
    if not ckpts.is_dir():
        return []
    found = [p for p in ckpts.iterdir()
             if p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest(run_dir: str | Path) -> Path | None:
    found = complete(run_dir)
    return found[-1] if found else None


def prune(run_dir: str | Path, *, keep_last: int, keep: tuple[int, ...] = ()) -> None:
    found = complete(run_dir)
    keep_names = {f"{PREFIX}{s:08d}" for s in keep if s is not None}
    for path in found[:-keep_last] if keep_last > 0 else found:
        if path.name not in keep_names:
            shutil.rmtree(path, ignore_errors=True)
    for leftover in root(run_dir).glob(".tmp-*"):  # interrupted saves
        shutil.rmtree(leftover, ignore_errors=True)


def load(path: Path, *, model, optimizer=None, scheduler=None) -> dict:
    """Restore weights (and optimizer, scheduler, RNG when given); returns state.json."""
    weights = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise RuntimeError(f"{path}: checkpoint does not match the model ({missing[:3]}); "
                           "resume with the same --model and --method")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / "state.json").read_text())
