"""gentune's training against the plain `transformers.Trainer` recipe, side by side.

Same model (the embedded SmolLM2-135M), same data (ACLSum abstract -> title, the demo's prompt),
same LoRA settings, batch size, learning rate, maximum length and number of steps. Each side runs
in its own process (so peak memory is its own); the table compares them.

    .venv/bin/python bench/train_throughput.py [--steps 12] [--batch-size 8] [--method lora]

Three sides: the Trainer recipe in fp32 (as users run it on a CPU), gentune forced to fp32, and
gentune with its default precision (`auto`: bf16 autocast where the CPU has native bf16).

target tokens = the tokens of the outputs (titles) + EOS: what the fine-tune is for. The Trainer
recipe (DataCollatorForLanguageModeling(mlm=False)) trains on every token, prompt included, pads
to the longest row of a random batch and projects every position onto the vocabulary.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from sides import report, run_sides, train_on_titles

ROOT = Path(__file__).resolve().parent.parent


def _records(n: int):
    from gentune.data.records import Record
    from gentune.demo import aclsum_rows

    return [
        Record(source="aclsum-train", row=i, **r)
        for i, r in enumerate(aclsum_rows("train")[:n], start=1)
    ]


def run_gentune(a) -> dict:
    from gentune.models.load import resolve_precision

    log, _ = train_on_titles(
        method=a.method,
        max_steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        max_length=a.max_length,
        packing=a.packing,
        seed=a.seed,
        precision=a.precision,
    )
    # the loop's own time; the validation at the last step is excluded
    seconds = float(log[-1]["elapsed_s"])
    return {
        "seconds": seconds,
        "steps": len(log),
        "tokens": sum(int(r["tokens"]) for r in log),
        "target_tokens": sum(int(r["target_tokens"]) for r in log),
        "first_loss": float(log[0]["loss"]),
        "last_loss": float(log[-1]["loss"]),
        "precision": resolve_precision(a.precision)[0],
    }


def run_trainer(a) -> dict:
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from gentune.data.encode import encode_example
    from gentune.data.tasks import build_template, get_task
    from gentune.demo import INSTRUCTION
    from gentune.models.load import load_model, wrap_lora

    model, tok, _ = load_model("smollm2-135m")
    template = build_template(get_task("summarization"), tok, instruction=INSTRUCTION)
    rows = []
    for rec in _records(10**6):
        # the same text gentune trains on (prompt + title + EOS), tokenized the usual way
        [ex] = encode_example(rec, template, tok, max_length=a.max_length)
        rows.append({"input_ids": ex.input_ids, "n_target": ex.n_targets})
    if a.method == "lora":  # the same LoRA settings as gentune's defaults
        from gentune.config import TrainConfig

        d = TrainConfig(task="summarization", data="-", out="-")
        torch.manual_seed(a.seed)
        model = wrap_lora(model, r=d.lora_r, alpha=d.lora_alpha, dropout=d.lora_dropout)
    base = DataCollatorForLanguageModeling(tokenizer=tok, mlm=False)
    counts = {"tokens": 0, "target_tokens": 0}

    def collator(features):
        counts["target_tokens"] += sum(f.pop("n_target") for f in features)
        batch = base(features)
        counts["tokens"] += int(batch["attention_mask"].sum())
        return batch

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=a.batch_size,
        max_steps=a.steps,
        learning_rate=a.lr,
        lr_scheduler_type="cosine",
        warmup_steps=int(0.1 * a.steps),  # as gentune: warmup_ratio 0.1 of the steps
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=a.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
    start = time.time()
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "seconds": time.time() - start,
        "steps": result.global_step,
        "tokens": counts["tokens"],
        "target_tokens": counts["target_tokens"],
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "precision": "fp32",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--steps",
        type=int,
        default=12,
        help="12 x 8 = 96 of the 100 rows: both sides see (almost) the same rows",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--method", default="lora", choices=["lora", "full"])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--packing", action="store_true", help="gentune side: pack examples")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=["gentune", "trainer"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        report(run_gentune(a) if a.worker == "gentune" else run_trainer(a))
        return
    sides = {
        "trainer": ["--worker", "trainer"],
        "gentune fp32": ["--worker", "gentune", "--precision", "fp32"],
        "gentune (default)": ["--worker", "gentune", "--precision", "auto"],
    }
    results = run_sides(__file__, sides, sys.argv[1:])
    print(
        f"\nLoRA={a.method == 'lora'} steps={a.steps} batch={a.batch_size} "
        f"max_length={a.max_length} model=smollm2-135m data=ACLSum abstract->title "
        f"packing(gentune)={a.packing}\n"
    )
    head = (
        "side",
        "precision",
        "seconds",
        "target tok/s",
        "all tok/s",
        "peak RSS MiB",
        "loss first→last",
        "target tok/s vs Trainer",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    t = results["trainer"]
    for side, r in results.items():
        ratio = (r["target_tokens"] / r["seconds"]) / (t["target_tokens"] / t["seconds"])
        print(
            f"| {side} | {r['precision']} | {r['seconds']:.1f} | "
            f"{r['target_tokens'] / r['seconds']:.1f} | {r['tokens'] / r['seconds']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {r['first_loss']:.3f}→{r['last_loss']:.3f} | "
            f"{ratio:.2f}x |"
        )
    print("(the Trainer's loss is over all tokens, prompt included; gentune's over targets)")


if __name__ == "__main__":
    main()
