"""Does a static KV cache, or a compiled decode step, make generation faster here?

    .venv/bin/python bench/decode_cache.py [--precision fp32 bf16] [--prompts 16]

The embedded model (SmolLM2-135M) generates for ACLSum abstracts with the demo's prompt
(length-sorted, left-padded batches of 8, greedy, exactly 32 new tokens each) three ways, in one
process: transformers' dynamic cache (what gentune uses), `cache_implementation="static"`, and
the static cache with the forward compiled (`torch.compile(mode="reduce-overhead")`). Each is
timed twice after a warm-up; the compiled one's first pass includes its compilation. The
outputs are compared with the dynamic cache's, token for token.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def run(model, tok, prompts: list[list[int]], a, **kw) -> tuple[float, list]:
    """Seconds to generate for every prompt in left-padded batches, and the new tokens."""
    import torch

    outs = []
    start = time.perf_counter()
    for s in range(0, len(prompts), a.batch_size):
        batch = prompts[s : s + a.batch_size]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for r, prompt in enumerate(batch):
            ids[r, width - len(prompt) :] = torch.tensor(prompt)
            mask[r, width - len(prompt) :] = 1
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=a.new_tokens,
            min_new_tokens=a.new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            **kw,
        )
        outs.append(out[:, width:])
    return time.perf_counter() - start, outs


def measure(precision: str, a) -> list[tuple]:
    """(precision, decoding, first pass s, s, same tokens as the dynamic cache) rows."""
    import torch

    from gentune.data.encode import encode_prompt
    from gentune.data.records import Record
    from gentune.data.tasks import build_template, get_task
    from gentune.demo import INSTRUCTION, aclsum_rows
    from gentune.inference.load import load_for_inference

    loaded = load_for_inference("smollm2-135m", precision=precision)
    model, tok = loaded.model, loaded.tokenizer
    template = build_template(get_task("summarization"), tok, instruction=INSTRUCTION)
    prompts = sorted(
        (
            encode_prompt(Record(source="g", row=i, **r), template, tok, max_length=512)[0]
            for i, r in enumerate(aclsum_rows("val")[: a.prompts])
        ),
        key=len,
    )
    rows = []
    with torch.no_grad():
        run(model, tok, prompts, a)  # warm-up
        base_s, base = run(model, tok, prompts, a)
        rows.append((precision, "dynamic cache (gentune)", None, base_s, True))
        for how in ("static cache", "static cache + compiled forward"):
            if "compiled" in how:
                model.forward = torch.compile(model.forward, mode="reduce-overhead")
            first, _ = run(model, tok, prompts, a, cache_implementation="static")
            again, outs = run(model, tok, prompts, a, cache_implementation="static")
            same = all(torch.equal(x, y) for x, y in zip(base, outs, strict=True))
            rows.append((precision, how, first, again, same))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args()
    rows = [row for precision in a.precision for row in measure(precision, a)]
    tokens = a.prompts * a.new_tokens
    print(
        f"\nSmolLM2-135M, {a.prompts} ACLSum prompts, batches of {a.batch_size}, "
        f"{a.new_tokens} new tokens each\n"
    )
    print("| weights | decoding | first pass s | s | new tokens/s | vs dynamic | same tokens |")
    print("|---|---|---|---|---|---|---|")
    for precision, how, first, seconds, same in rows:
        base_s = next(r[3] for r in rows if r[0] == precision)
        print(
            f"| {precision} | {how} | {'' if first is None else f'{first:.1f}'} | "
            f"{seconds:.1f} | {tokens / seconds:.1f} | {base_s / seconds:.2f}× | "
            f"{'yes' if same else 'no'} |"
        )


if __name__ == "__main__":
    main()
