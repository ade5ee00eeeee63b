"""Which attention kernel pays for training on this CPU? Forward + backward of one attention
call at SmolLM2-135M's shape (9 heads of 64, a micro-batch of 8 rows), causal, side by side:

    .venv/bin/python bench/attention_cpu.py [--rows 8] [--length 282]

- PyTorch SDPA's CPU flash kernel in bf16 (what gentune's bf16 autocast runs today), with a
  padding mask and with `is_causal` (no mask: right padding needs none);
- the same kernel in fp32 (q, k, v upcast inside autocast);
- SDPA's math kernel in bf16;
- transformers' eager attention in bf16 (matmul, softmax in fp32, matmul).

The math kernel and eager attention keep the (rows, heads, T, T) probabilities for backward,
O(T²) memory: the last column estimates it (6 bytes an entry, as eager keeps them).

Times are medians of 5 timed calls after one warm-up, multiplied by the model's 30 layers.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, HEAD_DIM, LAYERS = 9, 64, 30


def _eager(q, k, v, bias):
    scores = (q @ k.transpose(-1, -2)) * HEAD_DIM**-0.5 + bias  # (B, H, T, T)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v


def _time(fn, q, k, v) -> float:
    times = []
    for _ in range(6):
        for t in (q, k, v):
            t.grad = None
        start = time.perf_counter()
        fn(q, k, v).sum().backward()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--length", type=int, default=282, help="the demo's widest titles batch")
    a = p.parse_args()
    b, t = a.rows, a.length
    mask = torch.ones(t, t, dtype=torch.bool).tril()[None, None].expand(b, 1, t, t)
    bias = torch.full((t, t), float("-inf")).triu(1).to(torch.bfloat16)

    def math_bf16(q, k, v):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    sides = {
        "SDPA flash, bf16, padding mask (today)": (
            torch.bfloat16,
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        ),
        "SDPA flash, bf16, is_causal": (
            torch.bfloat16,
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        ),
        "SDPA flash, fp32, padding mask": (
            torch.float32,
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        ),
        "SDPA math, bf16": (torch.bfloat16, math_bf16),
        "eager (transformers), bf16": (torch.bfloat16, lambda q, k, v: _eager(q, k, v, bias)),
    }
    print(f"\nrows={b} length={t} heads={HEADS} head_dim={HEAD_DIM} layers={LAYERS}\n")
    print("| attention | ms per step (30 layers) | vs today | probabilities kept MiB |")
    print("|---|---|---|---|")
    base = None
    for name, (dtype, fn) in sides.items():
        torch.manual_seed(0)
        q, k, v = (
            torch.randn(b, HEADS, t, HEAD_DIM, dtype=dtype, requires_grad=True) for _ in range(3)
        )
        ms = _time(fn, q, k, v) * LAYERS * 1000
        base = base or ms
        dense = name.startswith(("eager", "SDPA math"))  # both keep (B, H, T, T) for backward
        kept = b * HEADS * t * t * 6 * LAYERS / 2**20 if dense else 0
        print(f"| {name} | {ms:.0f} | {base / ms:.2f}x | {kept:.0f} |")


if __name__ == "__main__":
    main()
