"""Where a default training run's peak RSS goes, and what each memory setting costs in time and
loss — every variant in its own process, in one invocation.

    .venv/bin/python bench/memory.py [--set aclsum-summary] [--steps 6 | --steps 0] \\
        [--metric val_loss | --metric task] [--variants default kernel-cache-1024 ...]

Each variant runs `gentune train` on the set's `train` rows (bench/heldout.py) for `--steps`
optimizer steps with every default plus its own flags or environment. The table gives the
process's peak RSS and each phase's own peak (VmHWM reset as the phase starts: loading the
model, the training steps, validation, saving the resumable checkpoint, saving the run), the
seconds per optimizer step (from the run's log, the first step left out), and the training loss
of the last step, so a cut in memory is seen beside what it costs; under it, each optimizer
step's own peak (memory that grows with the steps shows there). `--steps 0` runs the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import heldout  # noqa: E402
from vs_trl import _side_args  # noqa: E402

# name: (gentune train flags, environment)
VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "default": ([], {}),
    # bf16 weights, gradients and moments (training/optim.py; an opt-in, not the default)
    "master-bf16": (["--master-weights", "bf16"], {}),
    # fp32 master weights, AdamW's moments in bf16 (the second rounded stochastically)
    "moments-bf16": (["--moments", "bf16"], {}),
    "moments-fp32": (["--moments", "fp32"], {}),
    "checkpointing": (["--gradient-checkpointing"], {}),
    "tokens-2048": (["--micro-batch-tokens", "2048"], {}),
    "tokens-512": (["--micro-batch-tokens", "512"], {}),
    "tokens-768": (["--micro-batch-tokens", "768"], {}),
    "mmap-threshold": ([], {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}),
    "arena-1": ([], {"MALLOC_ARENA_MAX": "1"}),
    "arena-2": ([], {"MALLOC_ARENA_MAX": "2"}),
    "mmap-threshold-2m": ([], {"MALLOC_MMAP_THRESHOLD_": str(2 << 20)}),
    "arena-1-mmap-threshold-2m": (
        [],
        {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(2 << 20)},
    ),
    # torch's CPU allocator asks for transparent huge pages for tensors of >= 2 MiB
    "thp": ([], {"THP_MEM_ALLOC_ENABLE": "1"}),
    "mmap-threshold-thp": (
        [],
        {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "THP_MEM_ALLOC_ENABLE": "1"},
    ),
    "mmap-threshold-4m": ([], {"MALLOC_MMAP_THRESHOLD_": str(4 << 20)}),
    "glibc-hugetlb": ([], {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),
    # oneDNN's own default, before memory.ONEDNN_PRIMITIVE_CACHE bounded it
    "kernel-cache-1024": ([], {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}),
    "kernel-cache-128": ([], {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "128"}),
    "kernel-cache-16": ([], {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16"}),
    # one process's checkpoint written by torch.distributed.checkpoint's own writer (what
    # every save did before checkpoint._write_plain), one file at a time and two at a time
    "checkpoint-dcp": ([], {"BENCH_CHECKPOINT_DCP": "1"}),
    "checkpoint-dcp-threads-2": (
        [],
        {"BENCH_CHECKPOINT_DCP": "1", "GENTUNE_CHECKPOINT_THREADS": "2"},
    ),
}


PHASES = [
    "loading the model",
    "training steps",
    "validation",
    "saving the checkpoint",
    "saving the run",
]


def _rss(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) / 1024


def child(args: list[str]) -> dict:
    """One `gentune train` in this process; each phase's peak RSS, the run's peak, the log."""
    a, extra = _side_args(args, strict=False)  # the rest: gentune train flags
    import gentune.training.prepare as prepare
    import gentune.training.train as train
    from gentune.cli import main
    from gentune.rundir import read_log
    from gentune.training.memory import reset_peak_memory

    phases: dict[str, float] = {}  # phase -> its own peak RSS (VmHWM reset at its start)
    seconds: dict[str, float] = {}  # phase -> its seconds, summed over its calls
    steps: list[int] = []  # each optimizer step's own peak

    def traced(module, name: str, phase: str) -> None:
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            before = _rss("VmHWM")
            phases["before"] = max(phases.get("before", 0.0), before)
            reset_peak_memory()
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - start
                phases[phase] = max(phases.get(phase, 0.0), _rss("VmHWM"))
                if phase == "training steps":
                    steps.append(round(_rss("VmHWM")))
                reset_peak_memory()

        setattr(module, name, wrapper)

    if os.environ.get("BENCH_CHECKPOINT_DCP"):  # the variants checkpoint-dcp*
        import gentune.checkpoint as checkpoint

        checkpoint._plain = lambda tensors: False
    traced(prepare, "load_model", "loading the model")
    traced(train, "optimizer_step", "training steps")
    traced(train, "validate", "validation")
    traced(train, "save_checkpoint", "saving the checkpoint")
    traced(train, "_save_run", "saving the run")
    spec = heldout.SETS[a.set]
    argv = ["train", "--task", spec.task, *spec.flags, "--data", a.data, "--out", a.out]
    start = time.perf_counter()
    code = main([*argv, "--no-progress", *extra])
    if code:
        raise SystemExit(code)
    log = read_log(Path(a.out))
    return {
        "seconds": time.perf_counter() - start,
        "peak": max([_rss("VmHWM"), *phases.values()]),
        "phases": phases,
        "phase_seconds": seconds,
        "steps": steps,
        "log": log,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        print(json.dumps(child(sys.argv[2:]), default=str))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default="aclsum-summary")
    ap.add_argument("--steps", type=int, default=6, help="0: the whole run")
    ap.add_argument("--metric", default="val_loss", help="'task': the task's own (generates)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="memory-"))
    files = heldout.write(a.set, work / "data")
    from gentune import DEFAULT_MODEL

    print(f"{a.set}: {a.steps} optimizer steps of gentune's defaults; {DEFAULT_MODEL}")
    print("| variant | peak RSS MiB | " + " | ".join(PHASES) + " | s / step | last loss |")
    print("|---|---|" + "---|" * len(PHASES) + "---|---|")
    for i, name in enumerate(a.variants, 1):  # a variant may be named twice (A B A B)
        flags, env = VARIANTS[name]
        run = work / f"{i}-{name}"
        cmd = [sys.executable, __file__, "_child", "--set", a.set, "--data", str(files["train"])]
        cmd += ["--out", str(run), *flags]
        cmd += ["--max-steps", str(a.steps)] if a.steps else []  # 0: the whole run
        cmd += ["--metric", a.metric] if a.metric != "task" else []
        out = subprocess.run(
            cmd, check=True, stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        log = r["log"]
        times = [float(x["elapsed_s"]) for x in log if "elapsed_s" in x]
        per_step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else float("nan")
        print(
            f"| {name} | {r['peak']:.0f} | "
            + " | ".join(f"{r['phases'].get(p, float('nan')):.0f}" for p in PHASES)
            + f" | {per_step:.2f} | {float(log[-1]['loss']):.4f} |",
            flush=True,
        )
        print(f"<!-- {name}: each step's peak MiB {r['steps']} -->", flush=True)
        spent = ", ".join(f"{p} {r['phase_seconds'].get(p, 0.0):.1f}" for p in PHASES)
        print(f"<!-- {name}: {r['seconds']:.1f} s in all; seconds by phase: {spent} -->")


if __name__ == "__main__":
    main()
