"""gentune's encoder-decoder training and generation against Hugging Face's seq2seq recipe.

    .venv/bin/python bench/seq2seq_throughput.py [--steps 12] [--batch-size 8] [--generate 48]

The model is t5-small's architecture (`T5Config()`: 6+6 layers, d_model 512, vocab 32,128)
with random weights (speed does not depend on them), saved once; the tokenizer is a small
byte-level BPE made in-process (tests/seq2seq_models.py), so texts come out about twice as many
tokens as with T5's own. Data: ACLSum abstract -> title (`pip install --no-deps aclsum`).

Sides, each in its own process (peak RSS is its own):
- **Seq2SeqTrainer**: `Seq2SeqTrainer` + `DataCollatorForSeq2Seq` on the same tokenized rows
  (source "summarize: " + abstract, target the title), fp32 as users run it on a CPU, the
  same batch, learning rate, schedule and steps; then `trainer.predict(...,
  predict_with_generate=True)` on the generation rows (greedy, the same new-token cap).
- **gentune fp32** and **gentune (default precision)**: `gentune train` (the library call)
  with the same settings; then gentune's batched `generate` on the same rows in fp32, and again
  with bf16 weights (what `--precision bf16` gives generation; the random model's outputs say
  nothing of agreement: bench/generate_speed.py measures it on real models).

Training: target tokens (title + EOS) per second of the loop; generation: rows per second.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sides import report, run_sides

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def build_model(path: Path) -> Path:
    """t5-small's architecture, random weights, with the in-process tokenizer."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, T5Config

    from tests.seq2seq_models import _tokenizer

    torch.manual_seed(0)
    tok = _tokenizer("t5")
    config = T5Config(
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _rows(n: int) -> list[dict]:
    from gentune.demo import aclsum_rows

    return aclsum_rows("train")[:n]


def run_gentune(a) -> dict:
    import torch

    from gentune.config import Decoding, TrainConfig
    from gentune.data.encode import encode_prompt
    from gentune.data.records import Record
    from gentune.demo import aclsum_rows, write_jsonl
    from gentune.inference.generate import generate
    from gentune.inference.load import load_for_inference
    from gentune.rundir import read_log
    from gentune.training.train import train

    tmp = Path(tempfile.mkdtemp())
    data = write_jsonl(tmp / "train.jsonl", _rows(a.steps * a.batch_size))
    val = write_jsonl(tmp / "val.jsonl", aclsum_rows("val")[:2])
    cfg = TrainConfig(
        task="summarization",
        data=str(data),
        val=str(val),
        out=str(tmp / "run"),
        model=a.model,
        method="full",
        max_steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        max_length=a.max_length,
        eval_generate=0,
        eval_every=10**6,
        progress=False,
        tensorboard=False,
        precision=a.precision,
    )
    train(cfg, log=lambda *_: None)
    log = read_log(tmp / "run")
    seconds = float(log[-1]["elapsed_s"])  # the loop's own time, without the final validation
    loaded = load_for_inference(str(tmp / "run"))  # fp32, as evaluation generates by default
    prompts = [
        encode_prompt(
            Record(source="g", row=i, **r), loaded.template, loaded.tokenizer, max_length=512
        )[0]
        for i, r in enumerate(_rows(a.generate))
    ]

    def timed() -> tuple[float, int]:
        torch.manual_seed(0)
        start = time.time()
        out = generate(
            loaded.model,
            loaded.tokenizer,
            prompts,
            Decoding(max_new_tokens=a.new_tokens),
            batch_size=a.batch_size,
        )
        return time.time() - start, len(out)

    gen_s, n_rows = timed()
    loaded.model.to(torch.bfloat16)  # what --precision bf16 does to generation's weights
    bf16_s, _ = timed()
    shutil.rmtree(tmp, ignore_errors=True)  # (the run's checkpoints: a gigabyte)
    return {
        "seconds": seconds,
        "target_tokens": sum(int(r["target_tokens"]) for r in log),
        "first_loss": float(log[0]["loss"]),
        "last_loss": float(log[-1]["loss"]),
        "gen_seconds": gen_s,
        "gen_rows": n_rows,
        "bf16_seconds": bf16_s,
    }


def run_trainer(a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(a.model)

    def tokenize(rows: list[dict], labels: bool = True) -> Dataset:
        enc = tok(
            ["summarize: " + r["input"] for r in rows], truncation=True, max_length=a.max_length
        )
        if labels:
            enc["labels"] = tok(text_target=[r["output"] for r in rows])["input_ids"]
        return Dataset.from_dict(dict(enc))

    train_set = tokenize(_rows(a.steps * a.batch_size))
    targets = sum(len(x) for x in train_set["labels"])
    args = Seq2SeqTrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=a.batch_size,
        max_steps=a.steps,
        learning_rate=a.lr,
        lr_scheduler_type="cosine",
        warmup_steps=int(0.1 * a.steps),
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=42,
        dataloader_num_workers=0,
        disable_tqdm=True,
        predict_with_generate=True,
        generation_max_length=None,
        generation_num_beams=1,
    )
    collator = DataCollatorForSeq2Seq(tok, model=model)
    trainer = Seq2SeqTrainer(
        model=model, args=args, train_dataset=train_set, data_collator=collator
    )
    start = time.time()
    trainer.train()
    seconds = time.time() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    test_set = tokenize(_rows(a.generate))  # a labelled test set, as predict is run
    torch.manual_seed(0)
    start = time.time()
    pred = trainer.predict(test_set, max_new_tokens=a.new_tokens, num_beams=1, do_sample=False)
    gen_s = time.time() - start
    return {
        "seconds": seconds,
        "target_tokens": targets,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "gen_seconds": gen_s,
        "gen_rows": len(pred.predictions),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--generate", type=int, default=48, help="rows to generate for")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=["gentune", "trainer"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        report(run_gentune(a) if a.worker == "gentune" else run_trainer(a))
        return
    model = build_model(Path(tempfile.mkdtemp()) / "t5-small-random")
    sides = {
        "Seq2SeqTrainer": ["--worker", "trainer"],
        "gentune fp32": ["--worker", "gentune", "--precision", "fp32"],
        "gentune (default)": ["--worker", "gentune", "--precision", "auto"],
    }
    results = run_sides(__file__, sides, ["--model", str(model), *sys.argv[1:]])
    shutil.rmtree(model.parent, ignore_errors=True)
    base = results["Seq2SeqTrainer"]
    print(
        f"\nt5-small architecture (random weights), {a.steps} steps of {a.batch_size} rows, "
        f"ACLSum abstract -> title; generation: {a.generate} rows, greedy, at most "
        f"{a.new_tokens} new tokens, batch {a.batch_size}\n"
    )
    print(
        "| side | training s | target tok/s | vs Seq2SeqTrainer | loss first→last | "
        "generation s | rows/s | vs predict_with_generate | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    gen_rows = []
    for side, r in results.items():
        tps = r["target_tokens"] / r["seconds"]
        rows = r["gen_rows"] / r["gen_seconds"]
        base_tps = base["target_tokens"] / base["seconds"]
        base_rows = base["gen_rows"] / base["gen_seconds"]
        print(
            f"| {side} | {r['seconds']:.1f} | {tps:.1f} | {tps / base_tps:.2f}× | "
            f"{r['first_loss']:.3f}→{r['last_loss']:.3f} | {r['gen_seconds']:.1f} | "
            f"{rows:.2f} | {rows / base_rows:.2f}× | {r['peak_rss_mb']:.0f} |"
        )
        if "bf16_seconds" in r:
            half = r["gen_rows"] / r["bf16_seconds"]
            gen_rows.append(
                f"| {side}, bf16 weights | {r['bf16_seconds']:.1f} | {half:.2f} | "
                f"{half / base_rows:.2f}× |"
            )
    print("\nThe same generation with bf16 weights (`--precision bf16`), after the fp32 one:\n")
    print("| side | generation s | rows/s | vs predict_with_generate |")
    print("|---|---|---|---|")
    print("\n".join(gen_rows))


if __name__ == "__main__":
    main()
