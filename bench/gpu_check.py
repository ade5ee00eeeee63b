"""What gentune does with the machine's accelerator (a GPU where there is one, else the CPU):
training tokens/s and MFU for full fine-tuning and LoRA in fp32 and bf16 (their loss curves side
by side), and generation tokens/s and peak memory, for the embedded model.

    .venv/bin/python bench/gpu_check.py            # the full check (a GPU machine)
    .venv/bin/python bench/gpu_check.py --small    # a few steps: CI runs it on a CPU

Data: ACLSum abstract -> title (the demo's rows). Each side runs `gentune train` (the library
call) in its own process, so its peak memory is its own.

MFU (model FLOPs utilisation) = model FLOPs per second / the device's measured peak: a large
matmul timed in the side's precision on the same device (not a datasheet figure). Model FLOPs
per token follow the usual rule: 6 × parameters for full fine-tuning (forward, and backward for
activations and weights), 4 × parameters for LoRA (the frozen weights get no gradient);
attention's own FLOPs and the padding are not counted, so MFU is a lower bound.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sides import report, run_sides, train_on_titles

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

SIDES = [("full", "fp32"), ("full", "bf16"), ("lora", "fp32"), ("lora", "bf16")]


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "CPU"
    names = [x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")]
    return f"{names[0]}, {len(names)} threads" if names else "CPU"


def matmul_peak(precision: str, n: int) -> float:
    """FLOP/s of an n×n matmul in `precision` on this device (the best of a few)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    device = _device()
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _peak_memory_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def run_train(a) -> dict:
    log, stats = train_on_titles(
        method=a.method,
        precision=a.precision,
        max_steps=a.steps,
        batch_size=a.batch_size,
        max_length=a.max_length,
        model=a.model,
    )
    params = int(stats["total_parameters"])
    tokens = sum(int(r["tokens"]) for r in log)
    seconds = float(log[-1]["elapsed_s"])  # the loop's own time (validation excluded)
    flops = (6 if a.method == "full" else 4) * params * tokens
    peak = matmul_peak(a.precision, a.matmul)
    return {
        "seconds": seconds,
        "steps": len(log),
        "tokens_per_s": tokens / seconds,
        "mfu": flops / seconds / peak,
        "peak_tflops": peak / 1e12,
        "losses": [float(r["loss"]) for r in log],
        "peak_memory_mb": _peak_memory_mb(),
    }


def run_generate(a) -> dict:
    import torch

    from gentune.config import Decoding
    from gentune.data.encode import encode_prompt
    from gentune.data.records import Record
    from gentune.data.tasks import build_template, get_task
    from gentune.demo import INSTRUCTION, aclsum_rows
    from gentune.inference.generate import generate
    from gentune.inference.load import load_for_inference

    loaded = load_for_inference(a.model, precision=a.precision)
    template = build_template(get_task("summarization"), loaded.tokenizer, instruction=INSTRUCTION)
    prompts = [
        encode_prompt(Record(source="g", row=i, **r), template, loaded.tokenizer, max_length=512)[0]
        for i, r in enumerate(aclsum_rows("val")[: a.prompts])
    ]
    decoding = Decoding(max_new_tokens=a.new_tokens)  # greedy; tokens/s counts what was made
    generate(loaded.model, loaded.tokenizer, prompts[:1], decoding, batch_size=1)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = generate(loaded.model, loaded.tokenizer, prompts, decoding, batch_size=a.batch_size)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "new_tokens": sum(g.new_tokens for g in out),
        "rows": len(out),
        "peak_memory_mb": _peak_memory_mb(),
        "attention": loaded.model.config._attn_implementation,
    }


def _mem(r: dict) -> str:
    if r.get("peak_memory_mb") is not None:
        return f"{r['peak_memory_mb']:.0f} (GPU)"
    return f"{r['peak_rss_mb']:.0f} (RSS)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="a few steps and rows (CI, on a CPU)")
    p.add_argument("--model", default="smollm2-135m", help="model id or directory")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--prompts", type=int, default=64, help="rows to generate for")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--matmul", type=int, default=None, help="size of the peak-FLOP/s matmul")
    p.add_argument("--worker", choices=["train", "generate"], help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.small:
        a.steps, a.batch_size, a.max_length, a.prompts, a.new_tokens = 2, 4, 256, 4, 8
    if a.matmul is None:
        a.matmul = 8192 if _device().type == "cuda" else 2048  # (smaller ones miss the peak)
    if a.worker:
        report(run_train(a) if a.worker == "train" else run_generate(a))
        return
    passed = [x for x in sys.argv[1:] if x != "--small"]
    if a.small:
        passed += ["--steps", "2", "--batch-size", "4", "--max-length", "256", "--prompts", "4",
                   "--new-tokens", "8", "--matmul", str(a.matmul)]  # fmt: skip
    train_sides = {
        f"{m} {pr}": ["--worker", "train", "--method", m, "--precision", pr] for m, pr in SIDES
    }
    gen_sides = {
        f"generate {pr}": ["--worker", "generate", "--precision", pr] for pr in ("fp32", "bf16")
    }
    results = run_sides(__file__, {**train_sides, **gen_sides}, passed)
    print(
        f"\n{a.model} on {_device().type}: {_device_name()}; training "
        f"{a.steps} steps of {a.batch_size} rows (ACLSum abstract -> title, <= {a.max_length} "
        f"tokens); generation {a.prompts} rows, {a.new_tokens} new tokens each, batch "
        f"{a.batch_size}\n"
    )
    print("| training | s | tokens/s | MFU | matmul peak TFLOP/s | peak memory MiB |")
    print("|---|---|---|---|---|---|")
    for side in train_sides:
        r = results[side]
        print(
            f"| {side} | {r['seconds']:.1f} | {r['tokens_per_s']:.0f} | {100 * r['mfu']:.1f} % | "
            f"{r['peak_tflops']:.2f} | {_mem(r)} |"
        )
    print("\n| step | " + " | ".join(f"loss, {s}" for s in train_sides) + " |")
    print("|---" * (len(train_sides) + 1) + "|")
    for step in range(a.steps):
        losses = [results[s]["losses"][step] for s in train_sides]
        print(f"| {step + 1} | " + " | ".join(f"{x:.4f}" for x in losses) + " |")
    print(f"\n(attention: {results['generate fp32']['attention']})\n")
    print("| generation | s | new tokens/s | peak memory MiB |")
    print("|---|---|---|---|")
    for side in gen_sides:
        r = results[side]
        print(f"| {side} | {r['seconds']:.1f} | {r['new_tokens'] / r['seconds']:.1f} | {_mem(r)} |")


if __name__ == "__main__":
    main()
