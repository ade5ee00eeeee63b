"""Training over several processes, beyond what data parallelism (accelerate's DDP) does by
itself: the launcher's settings read once (accelerate's FSDP and DeepSpeed configs), FSDP2
sharding of weights, gradients and optimizer state (PyTorch `fully_shard`, each
decoder layer on its own, on CPUs (gloo) and GPUs (nccl) alike), gradient sync under
accumulation, full weights gathered for saving, and another process's failure turned into one
line instead of a hang.

accelerate applies FSDP only on accelerators, so gentune shards the model itself on every
device; an accelerate config with `distributed_type: FSDP` and `fsdp_version: 2` means
`--fsdp`, and its other fsdp_* settings are not read.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta
from typing import Any

import torch

from gentune.config import TrainConfig
from gentune.errors import ConfigError, TrainingError


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def launcher_settings(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with --fsdp set where `accelerate launch` was given an FSDP2 config; DeepSpeed
    and FSDP version 1 are refused (they are not tested here: no checkpoint of theirs is
    known to resume exactly), naming what to use instead."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError(
            "the accelerate config asks for DeepSpeed, which gentune does not support (its "
            "checkpoints and loss scaling are untested here); use FSDP2 instead: an accelerate "
            "config with distributed_type: FSDP and fsdp_version: 2, or `torchrun ... gentune "
            "train --fsdp` (examples/multi-gpu.md)"
        )
    if _flag("ACCELERATE_USE_FSDP"):
        version = os.environ.get("FSDP_VERSION", "1")
        if version != "2":
            raise ConfigError(
                f"the accelerate config asks for FSDP version {version}; gentune shards with "
                "FSDP2: set fsdp_version: 2 in it (or use `torchrun ... gentune train --fsdp`)"
            )
        os.environ.pop("ACCELERATE_USE_FSDP")  # gentune shards the model itself (below)
        cfg = replace(cfg, fsdp=True)
    return cfg


def process_group_kwargs(timeout_s: float):
    """accelerate's handler that sets how long a collective waits for the other processes."""
    from accelerate.utils import InitProcessGroupKwargs

    return InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))


def shard(model, precision: str) -> int:
    """Shard `model` in place with FSDP2: every decoder layer (the classes the model names in
    `_no_split_modules`) on its own, then the rest (embeddings, head) at the root; parameters
    gathered in the training precision, gradients reduced in fp32. Returns the layers
    sharded."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from gentune.models.families import causal_lm

    base = causal_lm(model)
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(
            f"--fsdp: {type(base).__name__} names no layers to shard one by one "
            "(_no_split_modules); train it without --fsdp"
        )
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    # the root is the transformers model, under peft's wrapper: its forward (which generate
    # calls too) gathers the embeddings and the head
    fully_shard(base, mp_policy=policy)
    return len(layers)


def sharded(model) -> bool:
    """Whether `model` was sharded by `shard` (FSDP2)."""
    from gentune.models.families import is_sharded

    return model is not None and is_sharded(model)


def gradient_sync(model, on: bool) -> None:
    """Under FSDP2, whether this backward reduce-scatters gradients (only the last micro-batch
    of a step does); nothing for other models."""
    from gentune.models.families import causal_lm

    if sharded(model):
        causal_lm(model).set_requires_gradient_sync(on)


def local(value):
    """A DTensor's full value (a gradient norm over shards); other values as they are."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def full_weights(model, *, trainable_only: bool) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) weights on CPU, gathered from every process (all must call it) —
    None for a model that is not sharded: it is saved as it is."""
    if not sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only
    )
    weights: Any = get_model_state_dict(model, options=options)
    # a tied parameter's second name (lm_head = embed_tokens) is left to the config's tie
    every = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    tied = every - {n for n, _ in model.named_parameters()}
    return {k: v for k, v in weights.items() if k not in tied}


def collective_failure(e: BaseException, cfg: TrainConfig, rank: int) -> TrainingError | None:
    """One line for a collective that failed because another process died or hung (None for
    other errors)."""
    text = str(e)
    signs = ("gloo", "nccl", "Connection closed by peer", "Connection reset", "timed out")
    distributed_error = getattr(torch.distributed, "DistError", ())
    if not (isinstance(e, distributed_error) or any(s.lower() in text.lower() for s in signs)):
        return None
    first = text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__
    return TrainingError(
        f"process {rank}: another process of this run stopped or did not answer within "
        f"--dist-timeout {cfg.dist_timeout:g} s ({first}); the run stops here: its last "
        "complete checkpoint is kept, continue it with --resume (on any number of processes)"
    )
