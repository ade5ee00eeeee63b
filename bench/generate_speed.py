"""gentune's evaluation generation against a one-by-one `model.generate` loop, side by side.

Same model, same prompts (the demo's ACLSum validation abstracts with the demo's prompt), greedy,
same max_new_tokens. Sides: the loop (fp32), gentune in fp32, gentune with bf16 weights at batch
8 and 16, gentune with int8 weights (torchao weight-only, `--quantize int8`). Prints times,
speed-ups, each side's greedy agreement with gentune's fp32 outputs, and its ROUGE-L against
the titles with the paired-bootstrap interval of its difference from fp32.

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
    from gentune.data.encode import encode_prompt
    from gentune.data.records import Record
    from gentune.data.tasks import build_template, get_task
    from gentune.demo import INSTRUCTION, aclsum_rows
    from gentune.inference.generate import eos_ids, generate
    from gentune.inference.load import load_for_inference
    from gentune.metrics import corpus_metric, paired_bootstrap

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
    refs = [r["output"] for r in rows]
    sides = [("gentune generate, fp32", t_ours, ours)]
    for label, precision, quantize, batch in (
        ("bf16 weights", "bf16", None, a.batch_size),
        ("bf16 weights, batch 16", "bf16", None, 16),
        ("int8 weights (torchao, weight-only)", "fp32", "int8", a.batch_size),
    ):
        other = load_for_inference(a.model, precision=precision, quantize=quantize)
        generate(other.model, tok, prompts[:2], decoding, batch_size=2)  # warm-up
        start = time.time()
        texts = [g.text for g in generate(other.model, tok, prompts, decoding, batch_size=batch)]
        sides.append((label, time.time() - start, texts))
        del other

    same = sum(x == y for x, y in zip(loop, ours, strict=True))
    print(
        f"\nmodel={a.model} rows={len(prompts)} greedy max_new_tokens={a.max_new_tokens} "
        f"prompt tokens p50={sorted(map(len, prompts))[len(prompts) // 2]}\n"
    )
    print(
        "| side | seconds | rows/s | speed-up | identical to fp32 | ROUGE-L | "
        "ROUGE-L − fp32 [95% CI] |"
    )
    print("|---|---|---|---|---|---|---|")
    base_rouge = corpus_metric("rougeL", ours, refs)
    print(
        f"| one-by-one model.generate, fp32 | {t_loop:.1f} | {len(prompts) / t_loop:.2f} | "
        f"1.00x | {same}/{len(prompts)} | {corpus_metric('rougeL', loop, refs):.2f} | |"
    )
    for label, seconds, texts in sides:
        agree = sum(x == y for x, y in zip(ours, texts, strict=True))
        delta = ""
        if texts is not ours:
            boot = paired_bootstrap("rougeL", ours, texts, refs, samples=1000, seed=0)
            diff = corpus_metric("rougeL", texts, refs) - base_rouge
            delta = f"{diff:+.2f} [{boot['ci'][0]:+.2f}, {boot['ci'][1]:+.2f}]"
        print(
            f"| {label} (batch {a.batch_size if 'batch 16' not in label else 16}) | "
            f"{seconds:.1f} | {len(prompts) / seconds:.2f} | {t_loop / seconds:.2f}x | "
            f"{agree}/{len(prompts)} | {corpus_metric('rougeL', texts, refs):.2f} | {delta} |"
        )
    for x, y in zip(loop, ours, strict=True):
        if x != y:
            print(f"  differs:\n    loop:    {x!r}\n    gentune: {y!r}")


if __name__ == "__main__":
    main()
