"""Checkpoints that survive kills, resume exactly, and load on any number of processes.

    RUN/checkpoints/step-00000012/
      shards/                 the trainable parameters (LoRA adapter or all weights) and the
                              AdamW state, by parameter name, as torch.distributed.checkpoint's
                              safetensors: each process its own shards, in files of about
                              FILE_BYTES each (under FSDP each holds its slices)
      optimizer.json          AdamW's settings per parameter group
      scheduler.json          learning-rate schedule state
      rng.json + .safetensors python, numpy and torch RNG states
      state.json              step, position in the data order, log rows, early-stopping state

Loading reads the slices each process needs now, whatever the number of processes and the
sharding that wrote them (2 FSDP processes → 1, 1 → 2, DDP → FSDP). Nothing is unpickled:
loading a checkpoint never runs code from its files (the shards' layout is JSON in their
safetensors headers).

A checkpoint is written into a temporary directory and renamed into place by the main process
once every process has written its shards; `state.json` is written last, so a directory named
step-N always holds a complete checkpoint and a kill in the middle of a save leaves only a
`.tmp-*` directory, which is never picked and is cleaned up.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gentune.config import TrainConfig
from gentune.errors import TrainingError, os_error, read_json_object

PREFIX = "step-"
SHARDS = "shards"  # the checkpoint's folder of tensors, files of about FILE_BYTES per process
# One process writes its shards with safetensors directly (`_write_plain`); several write through
# torch.distributed.checkpoint, whose safetensors writer serialises a whole file in memory before
# writing it, so a process's shards in one file would cost a transient copy of the weights and
# the AdamW state (+2.7 GiB at SmolLM2-135M's full fine-tuning, above the training steps' own
# peak: bench/memory.py); files of this size bound the copy.
FILE_BYTES = 128 * 2**20
# Files DCP writes at once per process (several processes). Two threads (one file's
# serialisation overlapping another's write) saved 1.7 s per SmolLM2-135M checkpoint but held
# one more file's transient copy (+111 MiB during the save; bench/results/memory.md), so one.
# GENTUNE_CHECKPOINT_THREADS overrides it (bench/memory.py's variant checkpoint-dcp-threads-2).
WRITE_THREADS = 1


def root(run_dir: str | Path) -> Path:
    """RUN/checkpoints."""
    return Path(run_dir) / "checkpoints"


def _fsync(path: Path) -> None:
    """A file's or a directory's contents to the disk (where the OS allows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    """Python, NumPy and torch (and CUDA) random states, as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)  # the legacy state is a tuple around the key array
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    run_dir: str | Path,
    step: int,
    *,
    model,
    optimizer,
    scheduler,
    state: dict,
    keep_last: int,
    keep: tuple[int | None, ...] = (),
    crash_hook=None,
    main: bool = True,
) -> Path:
    """Write checkpoint `step` atomically, then prune to the last `keep_last` plus `keep`.
    Under several processes every one calls it (each writes its shards); `main` writes the
    rest and renames the directory into place."""
    ckpts = root(run_dir)
    final = ckpts / f"{PREFIX}{step:08d}"
    tmp = ckpts / f".tmp-{PREFIX}{step:08d}"  # one name for every process
    if main:
        ckpts.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # an earlier attempt's
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    tensors, groups = _tensors(model, optimizer)
    (_write_plain if _plain(tensors) else _write_dcp)(tensors, tmp / SHARDS)
    if crash_hook:
        crash_hook("save")  # tests kill the process here, mid-save
    if main:
        save_tree(groups, tmp, "optimizer")
        save_tree(scheduler.state_dict(), tmp, "scheduler")
        save_tree(rng_state(), tmp, "rng")
        with (tmp / "state.json").open("w") as f:
            json.dump({**state, "step": step}, f, default=str)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # a checkpoint of the same step from an earlier attempt
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(ckpts)
        prune(run_dir, keep_last=keep_last, keep=keep)
    _barrier()
    return final


def _plain(tensors: dict[str, Any]) -> bool:
    """Whether one process holds every tensor whole and contiguous, in CPU memory (no sharding
    to plan; what safetensors writes as it is)."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return False
    return all(
        isinstance(t, torch.Tensor)
        and not isinstance(t, DTensor)
        and t.device.type == "cpu"
        and t.is_contiguous()
        for t in tensors.values()
    )


def _write_dcp(tensors: dict[str, Any], directory: Path) -> None:
    """This process's shards (FSDP's slices, or whole tensors) through torch.distributed
    checkpoint's safetensors writer, files of about FILE_BYTES, WRITE_THREADS at a time."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    with _one_process_is_fine():
        writer = HuggingFaceStorageWriter(
            str(directory),
            fqn_to_index_mapping=_files(tensors),
            save_distributed=True,
            thread_count=int(os.environ.get("GENTUNE_CHECKPOINT_THREADS", WRITE_THREADS)),
        )
        dcp.save(tensors, storage_writer=writer)


def _write_plain(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    """One process's whole CPU tensors written by safetensors itself, into the files, names and
    headers (each tensor's offsets in DCP_SHARDING_INFO) that torch.distributed.checkpoint's
    HuggingFaceStorageWriter gives them, so that its reader loads them as its own. Its writer
    first serialises each file into memory; this writes from the tensors: 0.2-0.7 s against
    1.3-3.7 s for 0.85 GB here (bench/results/memory.md), and no transient copy. Each file is
    fsynced, as DCP's are."""
    from torch.distributed.checkpoint import _hf_utils as hf

    mapping = _files(tensors)
    last = max(mapping.values(), default=0)  # (no tensors: no file, as DCP writes none)
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(1, last + 1):
        part = {name: t for name, t in tensors.items() if mapping[name] == index}
        offsets = {name: {hf.SAVED_OFFSETS_KEY: [0] * t.dim()} for name, t in part.items()}
        file = directory / hf._gen_file_name(index, last, shard_index=1)
        header = {
            hf.CUSTOM_METADATA_KEY: json.dumps(offsets),
            hf.DCP_VERSION_KEY: str(hf.HF_DCP_VERSION),
            hf.FORMAT_KEY: hf.FORMAT_VALUE,
        }
        try:
            save_file(part, str(file), metadata=header)
        except SafetensorError as e:  # a full disk, named as an OSError with its file
            raise (os_error(e, str(file)) or e) from e
        _fsync(file)


def _files(tensors: dict[str, Any]) -> dict[str, int]:
    """Each tensor's file (1, 2, …): consecutive tensors in files of about FILE_BYTES, sized
    by the whole tensor, so every process maps the same names to the same files."""
    mapping, index, size = {}, 1, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0
        if size and size + nbytes > FILE_BYTES:
            index, size = index + 1, 0
        mapping[name], size = index, size + nbytes
    return mapping


@contextmanager
def _one_process_is_fine():
    """torch.distributed.checkpoint warns each time it runs without a process group (one
    process), which is a normal way to train here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _tensors(model, optimizer) -> tuple[dict[str, Any], list]:
    """What a checkpoint holds, as one flat dict of (possibly sharded) tensors by name —
    "model.NAME" for the trainable parameters, "optim.NAME.KEY" for their AdamW state — and
    the optimizer's parameter groups (plain values). The tensors are the live ones, so loading
    into them restores the model and the optimizer in place."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(ignore_frozen_params=True)
    # each trainable parameter once (tied embeddings are one parameter with two names)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    weights = get_model_state_dict(model, options=options)
    tensors: dict[str, Any] = {f"model.{k}": v for k, v in weights.items() if k in names}
    groups: list = []
    if optimizer is not None:
        osd: Any = get_optimizer_state_dict(model, optimizer, options=options)
        for name, values in osd["state"].items():
            for key, value in values.items():
                tensors[f"optim.{name}.{key}"] = value
        groups = osd["param_groups"]
    return tensors, groups


def complete(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (half-written ones are never listed)."""
    ckpts = root(run_dir)
    if not ckpts.is_dir():
        return []
    found = [
        p for p in ckpts.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").exists()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = complete(run_dir)
    return found[-1] if found else None


def prune(run_dir: str | Path, *, keep_last: int, keep: tuple[int | None, ...] = ()) -> None:
    """Delete all but the last `keep_last` complete checkpoints (and those in `keep`) and any
    half-written ones."""
    found = complete(run_dir)
    keep_names = {f"{PREFIX}{s:08d}" for s in keep if s is not None}
    for path in found[:-keep_last] if keep_last > 0 else found:
        if path.name not in keep_names:
            shutil.rmtree(path, ignore_errors=True)
    for leftover in root(run_dir).glob(".tmp-*"):  # interrupted saves
        shutil.rmtree(leftover, ignore_errors=True)


def load(path: Path, *, model, optimizer=None, scheduler=None) -> dict:
    """Restore weights (and optimizer, scheduler, RNG when given); returns state.json. Under
    several processes every one calls it and reads the slices it holds."""
    if (path / "optimizer.pt").exists():
        raise TrainingError(
            f"{path}: a checkpoint in the old pickle format, which gentune no "
            "longer loads (it could run code); start the run again with "
            "--overwrite"
        )
    try:
        _load_shards(path, model, optimizer)
        if scheduler is not None:
            scheduler.load_state_dict(load_tree(path, "scheduler"))
            set_rng_state(load_tree(path, "rng"))
        return json.loads((path / "state.json").read_text())
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise TrainingError(
            f"{path}: damaged checkpoint ({type(e).__name__}: {str(e)[:300]}); resume from "
            "an earlier one with --resume CHECKPOINT, or start again with "
            "--overwrite"
        ) from None


def read_state(path: Path) -> dict:
    """A checkpoint's state.json (step, data position, layout…), before anything is loaded."""
    try:
        return json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(
            f"{path}: damaged checkpoint ({type(e).__name__}: {e}); resume from an earlier one "
            "with --resume CHECKPOINT, or start again with --overwrite"
        ) from None


def _load_shards(path: Path, model, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    tensors, groups = _tensors(model, optimizer)
    reader = HuggingFaceStorageReader(str(path / SHARDS))
    saved = set(reader.read_metadata().state_dict_metadata)
    wanted = {k for k in tensors if k.startswith("model.")}
    if wanted - saved or {k for k in saved if k.startswith("model.")} - wanted:
        raise TrainingError(
            f"{path}: checkpoint does not match the model "
            f"({sorted(wanted ^ {k for k in saved if k.startswith('model.')})[:3]}); resume "
            "with the same --model and --method"
        )
    with _one_process_is_fine():
        dcp.load(tensors, storage_reader=reader)
    # the trainable weights only (the names were checked above): the frozen ones stay
    options = StateDictOptions(ignore_frozen_params=True, strict=False)
    weights: Any = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    set_model_state_dict(model, weights, options=options)
    if optimizer is not None:
        state: dict[str, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                name, _, field_ = key[len("optim.") :].rpartition(".")
                state.setdefault(name, {})[field_] = value
        saved_groups = load_tree(path, "optimizer")
        for group, mine in zip(saved_groups, groups, strict=True):
            group["params"] = mine["params"]  # names as this model calls them
        full: Any = {"state": state, "param_groups": saved_groups}
        set_optimizer_state_dict(model, optimizer, full, options=options)


def saved_weights(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's trainable weights by name, whole whatever sharding wrote them (in one
    process: for tools and tests)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    reader = HuggingFaceStorageReader(str(path / SHARDS))
    meta = reader.read_metadata().state_dict_metadata
    whole: dict[str, Any] = {
        k: torch.empty(m.size, dtype=m.properties.dtype)  # type: ignore[union-attr]
        for k, m in meta.items()
        if k.startswith("model.")
    }
    dcp.load(whole, storage_reader=reader, no_dist=True)
    return {k[len("model.") :]: v for k, v in whole.items()}


# ---- state dicts as JSON + safetensors (no pickle) -----------------------------------------
def save_tree(obj, directory: Path, name: str) -> None:
    """Write a nested state (dicts with any keys, lists, tuples, numbers, strings, tensors) as
    NAME.json, with its tensors in NAME.safetensors. Floats keep their exact value (repr)."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(x):
        if isinstance(x, torch.Tensor):
            key = str(len(tensors))
            tensors[key] = x.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x):
                return {"__dict__": {k: encode(v) for k, v in x.items()}}
            return {"__items__": [[encode(k), encode(v)] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {"__tuple__": [encode(v) for v in x]}
        if isinstance(x, list):
            return [encode(v) for v in x]
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot save {type(x).__name__} in a checkpoint")

    tree = encode(obj)
    if tensors:
        save_file(tensors, directory / f"{name}.safetensors")
    (directory / f"{name}.json").write_text(json.dumps(tree))


def load_tree(directory: Path, name: str):
    """The state written by `save_tree`."""
    tree = json.loads((directory / f"{name}.json").read_text())
    file = directory / f"{name}.safetensors"
    tensors = load_file(file) if file.exists() else {}

    def decode(x):
        if isinstance(x, list):
            return [decode(v) for v in x]
        if not isinstance(x, dict):
            return x
        if "__tensor__" in x:
            return tensors[x["__tensor__"]]
        if "__tuple__" in x:
            return tuple(decode(v) for v in x["__tuple__"])
        if "__items__" in x:
            return {decode(k): decode(v) for k, v in x["__items__"]}
        return {k: decode(v) for k, v in x["__dict__"].items()}

    return decode(tree)


# ---- resuming ------------------------------------------------------------------------------
@dataclass
class State:
    """Everything besides tensors that exact resume needs (saved as state.json)."""

    step: int = 0
    epoch: int = 0
    next_batch: int = 0  # index into the epoch's batch list where the next step starts
    history: list[dict] = field(default_factory=list)
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    gen_rows: int | None = None  # size of the generation subset, fixed at the first validation
    stopped_early: bool = False
    data_sha256: dict = field(default_factory=dict)  # the data trained on, checked on resume
    precision: str | None = None  # fp32 | bf16 | fp16: exact resume holds within one
    moments: str | None = None  # AdamW's moments, fp32 | bf16 (None: before they were recorded)
    layout: dict | None = None  # micro-batch and checkpointing chosen for --memory-budget
    samples: list[dict] = field(default_factory=list)  # outputs at each validation (samples.py)


# settings that may differ between a run and its resumption: they change neither the data
# order nor the optimizer's path (the data files are compared by content, not by path, so a
# copied or moved run can be resumed)
RESUMABLE = {
    "resume",
    "overwrite",
    "out",
    "data",
    "val",
    "progress",
    "max_steps",
    "epochs",
    "save_every",
    "keep_last",
    "tensorboard",
    "report_to",  # where the numbers are also sent, not what they are
    "tracker_dir",
    "tracker_project",
    "patience",
    "eval_budget_s",
    "samples",  # generated in no_grad, greedy: neither the data order nor the weights change
    "fsdp",  # sharded or not, the checkpoint loads on any number of processes
    "dist_timeout",
}


def check_resumable(run: Path, cfg: TrainConfig) -> None:
    """Refuse to continue `run` with settings that change the data order or the optimizer."""
    file = run / "train_config.json"
    if not file.exists():
        return
    saved = read_json_object(file, "training settings", TrainingError)
    now = cfg.to_dict()
    diffs = [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if k not in RESUMABLE and saved.get(k) != now.get(k)
    ]
    if diffs:
        raise TrainingError(
            f"{run}: cannot resume with different settings ({'; '.join(diffs)});"
            " use the original settings, --overwrite, or a new --out"
        )


def resume_point(cfg: TrainConfig, out: Path, log) -> Path | None:
    """The checkpoint to continue from (None: start from the beginning)."""
    if not cfg.resume:
        return None
    if cfg.resume == "latest":
        found = latest(out)
        check_resumable(out, cfg)
        if found is None:
            log(f"gentune: no complete checkpoint in {out}; starting from the beginning")
        return found
    found = Path(cfg.resume)
    if not (found / "state.json").is_file():
        raise TrainingError(
            f"--resume {cfg.resume}: not a complete checkpoint (a directory "
            "RUN/checkpoints/step-N with its state.json); give one, or --resume "
            "alone for the latest in --out"
        )
    check_resumable(found.resolve().parent.parent, cfg)
    return found
