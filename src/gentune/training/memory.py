"""Memory: what the process holds at its peak, what the machine has, and the training layout
(micro-batch, gradient checkpointing) that fits a budget — chosen by measuring, not guessing.

On a CPU the peak is the process's peak RSS (VmHWM), which Linux lets a process reset
(`/proc/self/clear_refs`), so one forward+backward on the longest micro-batch measures exactly
what a layout needs; on a GPU it is the allocator's peak.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from gentune.errors import TrainingError
from gentune.training.optim import moments_dtype


def peak_memory_mb() -> float:
    """Peak memory since the last reset: GPU allocations, or this process's peak RSS on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        found = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
        if found:
            return int(found.group(1)) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory() -> bool:
    """Start measuring a new peak; False where the platform cannot (then the peak is the
    process's whole life's)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def available_memory_mb() -> float | None:
    """Memory this process could still take: free GPU memory, or MemAvailable on Linux."""
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return free / 2**20
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"MemAvailable:\s+(\d+) kB", text)
    return int(found.group(1)) / 1024 if found else None


# padded tokens per forward pass on a CPU: 1024 peaked 1 GiB below 2048 at the same speed per
# step (2048 was chosen on speed alone, bench/train_throughput.py); 768 peaked 84 MiB below
# 1024 on aclsum-title's whole run at the same time (bench/results/memory.md)
CPU_MICRO_BATCH_TOKENS = 768


# oneDNN (the CPU's bf16 matmul kernels) keeps a compiled primitive per operator shape, up to
# 1024 of them; micro-batches of new lengths bring new shapes every step, so a run's memory grew
# with its steps (aclsum-summary, 23 steps: 4.2 -> 5.0 GiB). 64 holds a step's own shapes (the
# layers reuse them) and cut the run's peak by 0.5-0.65 GiB at the same speed
# (bench/results/memory.md).
ONEDNN_PRIMITIVE_CACHE = 64


def bound_kernel_cache() -> None:
    """Bound oneDNN's primitive cache, unless the user set ONEDNN_PRIMITIVE_CACHE_CAPACITY. It
    is read when the process creates its first primitive: call this before any CPU matmul."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_PRIMITIVE_CACHE))


# glibc serves a block above its mmap threshold with a mapping of its own, given back to the OS
# when freed; the threshold starts at 128 KiB and rises to the size of each larger block freed
# (up to 32 MiB), so after the first steps activations come from the heap, and the process
# keeps, fragmented, what its longest micro-batches took. Fixed at 2 MiB: -127 MiB on de-en,
# -177 MiB on aclsum-title at the same speed a step (1 MiB: -338 MiB, +10 % a step: every
# tensor of 1-2 MiB is then faulted in anew; bench/results/memory.md).
HEAP_MMAP_THRESHOLD = 2 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)


def bound_heap() -> bool:
    """Fix glibc's mmap threshold at HEAP_MMAP_THRESHOLD on a CPU, unless the user set it
    (MALLOC_MMAP_THRESHOLD_, GLIBC_TUNABLES); True where it was set. It applies to blocks
    allocated from then on: call this before the model is loaded."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in tunables:
        return False
    if torch.cuda.is_available():  # (measured on CPU training only)
        return False
    libc = _libc()
    try:
        return bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD))
    except AttributeError:  # a C library without mallopt (macOS)
        return False


def _libc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def default_micro_batch_tokens() -> int | None:
    """Padded tokens per forward pass when --micro-batch-tokens is not given: on a CPU a
    micro-batch of under 1k tokens is as fast per token as any (caches) and bounds the
    activations whatever the longest rows are; on a GPU, rows as given."""
    return None if torch.cuda.is_available() else CPU_MICRO_BATCH_TOKENS


def split_by_tokens(rows: list[int], length, cap: int | None, world: int = 1) -> list[list[int]]:
    """A micro-batch's rows (longest first) in pieces whose padded size is at most `cap`
    tokens per process (one row at least): the loss is normalised by the step's target tokens,
    so the gradient is the one of the whole micro-batch."""
    if not cap:
        return [rows]
    rows = sorted(rows, key=length, reverse=True)
    out, i = [], 0
    while i < len(rows):
        per = max(1, cap // max(1, length(rows[i])))
        out.append(rows[i : i + per * world])
        i += per * world
    return out


def probe_start(cfg, examples) -> int:
    """The token cap a --memory-budget probe starts from: --micro-batch-tokens, the CPU
    default, or (on a GPU) a whole micro-batch of the longest rows."""
    return (
        cfg.micro_batch_tokens
        or default_micro_batch_tokens()
        or cfg.micro * int(examples.lengths.max())
    )


@dataclass(frozen=True)
class Layout:
    """How a step is computed: padded tokens per forward pass, and whether activations are
    recomputed in backward."""

    micro_batch_tokens: int
    gradient_checkpointing: bool

    def describe(self) -> str:
        return f"micro-batches of <= {self.micro_batch_tokens} tokens" + (
            ", gradient checkpointing" if self.gradient_checkpointing else ""
        )


def candidate_layouts(tokens: int, checkpointing: bool, longest: int) -> list[Layout]:
    """From the fastest to the leanest: the configured layout, then gradient checkpointing,
    then halved micro-batches with checkpointing, down to one row of the longest example."""
    layouts = [Layout(tokens, checkpointing)]
    if not checkpointing:
        layouts.append(Layout(tokens, True))
    while tokens > longest:
        tokens = max(longest, tokens // 2)
        layouts.append(Layout(tokens, True))
    return layouts


def optimizer_state_mb(trainable: int, master: str = "fp32", moments: str = "auto") -> float:
    """AdamW's two moments (fp32, or bf16: asked, or with bf16 master weights), allocated at
    the first step (not there during a probe)."""
    return trainable * 2 * moments_dtype(master, moments).itemsize / 2**20


def fit_layout(measure, layouts: list[Layout], budget_mb: float, extra_mb: float, log) -> Layout:
    """The first layout whose measured peak (+ `extra_mb` not yet allocated) fits the budget;
    `measure(layout)` returns the peak in MiB. Every measurement is logged."""
    tried = []
    for layout in layouts:
        peak = measure(layout) + extra_mb
        tried.append(f"{layout.describe()}: {peak:.0f} MiB")
        log(f"gentune: memory probe: {tried[-1]} (budget {budget_mb:.0f} MiB)")
        if peak <= budget_mb:
            return layout
    raise TrainingError(
        f"--memory-budget {budget_mb / 1024:.1f}: no layout fits ({'; '.join(tried)}); "
        "raise the budget, lower --max-length, or use --method lora"
    )


def _release_freed() -> None:
    """Give freed heap pages back to the OS (glibc), so the next peak is measured from what is
    really held."""
    import gc

    gc.collect()
    libc = _libc()
    if libc and not torch.cuda.is_available():
        try:
            libc.malloc_trim(0)
        except AttributeError:
            pass


def checkpointing_on(model) -> bool:
    """Whether the model recomputes activations in backward."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(lm, "is_activation_checkpointing"):  # transformers 5 renamed it
        return bool(lm.is_activation_checkpointing)
    return bool(lm.is_gradient_checkpointing)


def set_checkpointing(model, on: bool) -> None:
    """Gradient (activation) checkpointing on or off; non-reentrant, so it works with LoRA's
    frozen inputs. transformers 5 renamed the methods; both names are served."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    new = hasattr(lm, "activation_checkpointing_enable")
    is_on = checkpointing_on(lm)
    if on and not is_on:
        if new:
            lm.activation_checkpointing_enable({"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif is_on and not on:
        (lm.activation_checkpointing_disable if new else lm.gradient_checkpointing_disable)()


def measure_step(model, batch: dict, autocast) -> float:
    """Peak memory (MiB) of one forward+backward on `batch`; gradients are dropped and the RNG
    restored afterwards, so the run is as if it never happened."""
    from gentune.models.loss import token_nll

    rng = torch.get_rng_state()
    _release_freed()
    reset_peak_memory()
    with autocast():
        nll, n = token_nll(model, batch)
    (nll / max(n, 1)).backward()
    peak = peak_memory_mb()
    model.zero_grad(set_to_none=True)
    del nll
    _release_freed()
    torch.set_rng_state(rng)
    return peak


def longest_batch(
    examples, micro: int, tokens: int, *, packing: bool, pad_id: int, seed: int, group: bool = True
):
    """The forward pass of the first epoch with the most padded tokens: the memory peak."""
    from gentune.data.encode import collate_for, length_grouped_batches

    def length(i: int) -> int:
        return int(examples.lengths[i])

    pieces = [
        piece
        for rows in length_grouped_batches(examples, micro, seed=seed, epoch=0, group=group)
        for piece in split_by_tokens(rows, length, tokens)
    ]
    rows = max(pieces, key=lambda b: len(b) * max(length(i) for i in b))
    return collate_for(packing)(examples.take(rows), pad_id)


def _max_over_processes(value: float) -> float:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())
    return value


def choose_layout(
    model, examples, cfg, *, tokens: int, pad_id: int, autocast, pending_mb: float, log, world=1
) -> Layout:
    """The fastest layout whose measured peak, plus `pending_mb` not allocated yet (the
    optimizer's state before its first step), fits `cfg.memory_budget` GiB — the same choice
    on every process (the largest peak of them counts)."""
    device = next(model.parameters()).device
    was_on = checkpointing_on(model)
    rows = max(1, cfg.micro // world)

    def measure(layout: Layout) -> float:
        set_checkpointing(model, layout.gradient_checkpointing)
        batch = longest_batch(
            examples,
            rows,
            layout.micro_batch_tokens,
            packing=cfg.packing,
            pad_id=pad_id,
            seed=cfg.seed,
            group=cfg.group_by_length,
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        return _max_over_processes(measure_step(model, batch, autocast))

    longest = int(examples.lengths.max())
    layouts = candidate_layouts(tokens, cfg.gradient_checkpointing, longest)
    try:
        layout = fit_layout(measure, layouts, cfg.memory_budget * 1024, pending_mb, log)
    except TrainingError:
        set_checkpointing(model, was_on)
        raise
    set_checkpointing(model, layout.gradient_checkpointing)
    return layout
