"""gentune's evaluation generation against a one-by-one `model.generate` loop, side by side.

Same model, same prompts (the demo's ACLSum validation abstracts with the demo's prompt), greedy,
same max_new_tokens. Prints the times, the speed-ups, and how many outputs are identical; a
third side runs gentune with bf16 weights (`--precision bf16`) and counts its greedy agreement
with the fp32 outputs.

    .venv/bin/python bench/generate_speed.py [--model smollm2-135m|RUN] [--rows 48]
                                             [--max-new-tokens 48] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="model or run directory")
    p.add_argument("--rows", type=int, default=48)
    p.add_argument("--max-new-tokens", type=int, default=48)  # as the demo evaluates
    p.add_argument("--batch-size", type=int, default=8)  # evaluate's default
    a = p.parse_args()

    import torch

    from gentune.config import Decoding
    from gentune.data import Record
    from gentune.demo import INSTRUCTION, aclsum_rows
    from gentune.encode import encode_prompt
    from gentune.generate import eos_ids, generate
    from gentune.runs import load_for_inference
    from gentune.tasks import build_template, get_task

    loaded = load_for_inference(a.model)
    model, tok = loaded.model, loaded.tokenizer
    template = loaded.template or build_template(
        get_task("summarization"), tok, instruction=INSTRUCTION
    )
    rows = aclsum_rows("val")[: a.rows]
    prompts = [
        encode_prompt(Record(source="val", row=i, **r), template, tok, max_length=2048)[0]
        for i, r in enumerate(rows, start=1)
    ]
    decoding = Decoding(max_new_tokens=a.max_new_tokens)
    stop = eos_ids(model, tok)

    # warm-up both paths once (allocator, kernels)
    generate(model, tok, prompts[:2], decoding, batch_size=2)

    start = time.time()
    loop = []
    with torch.no_grad():
        for ids in prompts:  # the usual loop: one prompt at a time, no padding
            x = torch.tensor([ids])
            out = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=False,
                max_new_tokens=a.max_new_tokens,
                eos_token_id=stop,
                pad_token_id=tok.pad_token_id,
            )
            new = out[0, len(ids) :].tolist()
            for k, t in enumerate(new):
                if t in stop:
                    new = new[:k]
                    break
            loop.append(tok.decode(new, skip_special_tokens=True).strip())
    t_loop = time.time() - start

    start = time.time()
    ours = [g.text for g in generate(model, tok, prompts, decoding, batch_size=a.batch_size)]
    t_ours = time.time() - start

    del model
    half = load_for_inference(a.model, precision="bf16")
    generate(half.model, tok, prompts[:2], decoding, batch_size=2)  # warm-up
    start = time.time()
    bf16 = [g.text for g in generate(half.model, tok, prompts, decoding, batch_size=a.batch_size)]
    t_bf16 = time.time() - start

    same = sum(x == y for x, y in zip(loop, ours, strict=True))
    agree = sum(x == y for x, y in zip(ours, bf16, strict=True))
    print(
        f"\nmodel={a.model} rows={len(prompts)} greedy max_new_tokens={a.max_new_tokens} "
        f"prompt tokens p50={sorted(map(len, prompts))[len(prompts) // 2]}\n"
    )
    print("| side | seconds | rows/s | speed-up |")
    print("|---|---|---|---|")
    print(f"| one-by-one model.generate | {t_loop:.1f} | {len(prompts) / t_loop:.2f} | 1.00x |")
    print(
        f"| gentune generate (batch {a.batch_size}, length-sorted, shared prefix) | "
        f"{t_ours:.1f} | {len(prompts) / t_ours:.2f} | {t_loop / t_ours:.2f}x |"
    )
    print(
        f"| gentune generate, bf16 weights | {t_bf16:.1f} | {len(prompts) / t_bf16:.2f} | "
        f"{t_loop / t_bf16:.2f}x |"
    )
    print(f"\nidentical greedy outputs, fp32 loop vs gentune: {same}/{len(prompts)}")
    print(f"bf16 weights, greedy outputs identical to fp32: {agree}/{len(prompts)}")
    for x, y in zip(loop, ours, strict=True):
        if x != y:
            print(f"  differs:\n    loop:    {x!r}\n    gentune: {y!r}")


if __name__ == "__main__":
    main()
