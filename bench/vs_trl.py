"""gentune's defaults against TRL's SFTTrainer recipe and the plain Trainer recipe, on the same
rows, in one invocation.

    .venv/bin/pip install trl          # only for this bench (gentune does not depend on it)
    .venv/bin/python bench/vs_trl.py [--sets aclsum-title de-en] [--split test] [--sides trl trainer]

For each held-out set (bench/heldout.py), the three sides train on its `train` rows from the
embedded SmolLM2-135M-Instruct:

- **TRL**: `SFTTrainer` as its documentation recipe runs it: prompt-completion rows (so the
  loss is on the completion only), full fine-tuning, 1 epoch, learning rate 5e-5, batch 4, and
  SFTConfig's own defaults for the rest (bf16 autocast, gradient checkpointing, max_length
  1024; on a machine without a GPU, `use_cpu=True`, as TRL's error message there asks). Its prompts are gentune's prompt text for the same rows, so
  both models are asked the same thing at training and at test time.
- **Trainer**: the recipe the tutorial this project grew from teaches: `Trainer` +
  `DataCollatorForLanguageModeling(mlm=False)` on prompt + target + EOS text (the loss on every
  token, the prompt's too; the collator masks padding, and where pad = EOS that masks EOS too),
  full fine-tuning, fp32 (the Trainer's default on a CPU), 1 epoch, lr 5e-5, batch 4.
- **gentune**: `gentune train --task T --data train.jsonl --out RUN` with every default (it
  holds 10 % of the rows out for its own validation, as a user's run does).

Each side trains in its own process; "training s" is the wall time from the rows on disk to the
fine-tuned model saved on disk (model loading, tokenizing, gentune's validation pass and its
final resumable checkpoint included; Python start-up and imports not), "peak RSS" the
process's own. Then `gentune evaluate RUN --data SPLIT.jsonl --compare
MODEL` (once per peer) scores both on the `--split` rows (test: rows no default was chosen on) with the
same prompt, greedy decoding and new-token cap, and gives paired-bootstrap intervals of the
differences.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

import heldout  # noqa: E402


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _side_args(args: list[str], *, strict: bool) -> tuple[argparse.Namespace, list[str]]:
    """A side's own arguments (--set, --data, --out, --seed) and, unless `strict`, the rest."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=42)
    if strict:
        return ap.parse_args(args), []
    return ap.parse_known_args(args)


def side_trl(args: list[str]) -> dict:
    """Train with TRL's SFTTrainer (in this process); returns seconds and peak RSS."""
    a, _ = _side_args(args, strict=True)
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    start = time.perf_counter()
    rows, tokenizer, path = _prompt_rows(a.set, a.data)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = SFTConfig(
        output_dir=a.out + "-trainer",
        num_train_epochs=1,
        learning_rate=5e-5,
        per_device_train_batch_size=4,
        completion_only_loss=True,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        seed=a.seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),  # what TRL's error on a CPU asks for
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(a.out)
    tokenizer.save_pretrained(a.out)
    seconds = time.perf_counter() - start  # rows on disk -> fine-tuned model on disk
    return {
        "seconds": seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "rows": len(rows),
        "precision": str(trainer.accelerator.mixed_precision),
        "gradient_checkpointing": bool(config.gradient_checkpointing),
    }


def side_trainer(args: list[str]) -> dict:
    """The seed's recipe, as the tutorial this project grew from teaches it: `Trainer` +
    `DataCollatorForLanguageModeling(mlm=False)` on prompt + target text (the loss on every
    token, prompt included; padding masked by the collator), full fine-tuning, fp32 (the
    Trainer's default on a CPU), 1 epoch, lr 5e-5, batch 4 as TRL's. In this process."""
    a, _ = _side_args(args, strict=True)
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    start = time.perf_counter()
    rows, tokenizer, path = _prompt_rows(a.set, a.data)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # the tutorial's line
    texts = [r["prompt"] + r["completion"] + tokenizer.eos_token for r in rows]
    dataset = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=1024),
        batched=True,
        remove_columns=["text"],
    )
    config = TrainingArguments(
        output_dir=a.out + "-trainer",
        num_train_epochs=1,
        learning_rate=5e-5,
        per_device_train_batch_size=4,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        seed=a.seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=config,
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False),
    )
    trainer.train()
    trainer.save_model(a.out)
    tokenizer.save_pretrained(a.out)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "rows": len(rows),
        "precision": "fp32",
        "eos_is_pad": tokenizer.pad_token_id == tokenizer.eos_token_id,
    }


def _prompt_rows(name: str, data: str):
    """The set's rows as {prompt, completion} in gentune's prompt text for them, the
    tokenizer, and the embedded model's directory."""
    from transformers import AutoTokenizer

    from gentune import DEFAULT_MODEL
    from gentune.cli import build_parser
    from gentune.data.records import Record
    from gentune.data.tasks import build_template, get_task
    from gentune.models.registry import resolve_model

    spec = heldout.SETS[name]
    flags = vars(build_parser().parse_args(["train", *_train_flags(spec), "--data", data]))
    path = resolve_model(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    template = build_template(
        get_task(spec.task),
        tokenizer,
        instruction=flags.get("instruction"),
        source_lang=flags.get("source_lang"),
        target_lang=flags.get("target_lang"),
    )
    rows = []
    for i, line in enumerate(Path(data).read_text().splitlines(), start=1):
        row = json.loads(line)
        if "messages" in row:
            record = Record(source=data, row=i, messages=tuple(row["messages"]))
        else:
            record = Record(source=data, row=i, input=row["input"], output=row["output"])
        prompt = "".join(s.text for s in template.prompt_segments(record, tokenizer))
        rows.append({"prompt": prompt, "completion": template.reference(record)})
    return rows, tokenizer, path


def _train_flags(spec) -> list[str]:
    return ["--task", spec.task, *spec.flags, "--out", "unused"]


def side_gentune(args: list[str]) -> dict:
    """`gentune train` with every default (in this process); seconds and peak RSS."""
    a, extra = _side_args(args, strict=False)  # the rest: gentune train flags
    # the libraries gentune trains with, imported before the clock starts, as the TRL side's
    # are (torch, transformers, datasets/pyarrow, trl): "imports not" holds for both sides
    import accelerate  # noqa: F401
    import pyarrow  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401

    import gentune.training.train  # noqa: F401
    from gentune.cli import main
    from gentune.rundir import read_log

    spec = heldout.SETS[a.set]
    argv = ["train", "--task", spec.task, *spec.flags, "--data", a.data, "--out", a.out]
    start = time.perf_counter()
    code = main([*argv, "--no-progress", *extra])
    seconds = time.perf_counter() - start
    if code:
        raise SystemExit(code)
    manifest = json.loads((Path(a.out) / "manifest.json").read_text())
    log = read_log(Path(a.out))
    return {
        "seconds": seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "steps": len(log),
        "precision": manifest["stats"]["precision"],
        "method": manifest["method"],
        "batch_size": json.loads((Path(a.out) / "train_config.json").read_text())["batch_size"],
    }


def _child(side: str, *args: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, f"_{side}", *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _fmt_ci(entry: dict, key: str, value: str) -> str:
    ci = entry.get(key)
    return f"{entry[value]:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{entry[value]:.2f}"


def _compare(run: Path, other: Path, data: Path, out: Path) -> dict:
    """`gentune evaluate RUN --compare OTHER` on `data`: {metric: entry} (tuned = the run)."""
    subprocess.run(
        [sys.executable, "-m", "gentune", "evaluate", str(run), "--data", str(data),
         "--out", str(out), "--compare", str(other), "--no-progress", "--checks", "none"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    comparison = json.loads((out / "comparison.json").read_text())
    return {m["metric"]: m for m in comparison["metrics"]} | {"rows": comparison["rows"]}


def bench_set(name: str, split: str, work: Path, extra: list[str], sides: list[str]) -> list[str]:
    spec = heldout.SETS[name]
    files = heldout.write(name, work / "data")
    run = work / f"{name}-gentune"
    peers = {}
    for side in sides:
        print(f"[{name}] {SIDES[side]} ...", file=sys.stderr)
        out = work / f"{name}-{side}"
        peers[side] = (
            out,
            _child(side, "--set", name, "--data", str(files["train"]), "--out", str(out)),
        )
    print(f"[{name}] gentune train (defaults) ...", file=sys.stderr)
    gen = _child("gentune", "--set", name, "--data", str(files["train"]), "--out", str(run), *extra)
    scores = {}
    for side, (out, _) in peers.items():
        print(f"[{name}] gentune evaluate --compare {side} ...", file=sys.stderr)
        scores[side] = _compare(run, out, files[split], work / f"{name}-eval-{side}")
    first = scores[sides[0]]
    shown = [m for m in ("rougeL", "bleu", "chrf") if m in first]
    rows = [
        f"\n{name} ({spec.task}): {sum(1 for _ in files['train'].open())} training rows, "
        f"{first['rows']} {split} rows\n",
        "| side | recipe | training s | peak RSS MiB | "
        + " | ".join(f"{m} [95% CI]" for m in shown)
        + " |",
        "|---|---|---|---|" + "---|" * len(shown),
    ]
    for side, (_, r) in peers.items():
        by = scores[side]
        rows.append(
            f"| {SIDES[side]} | {_recipe(side, r)} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
            + " | ".join(_fmt_ci(by[m], "base_ci", "base") for m in shown)
            + " |"
        )
    rows.append(
        f"| gentune | defaults ({gen['method']}, {gen['precision']}, {gen['steps']} steps"
        + (f", batch {gen['batch_size']}" if gen.get("batch_size") else "")
        + f") | {gen['seconds']:.1f} | {gen['peak_rss_mib']:.0f} | "
        + " | ".join(_fmt_ci(first[m], "tuned_ci", "tuned") for m in shown)
        + " |"
    )
    for side, (_, r) in peers.items():
        by = scores[side]
        rows.append(
            f"| gentune − {SIDES[side].split()[0]} | | {gen['seconds'] / r['seconds']:.0%} of its "
            f"time | {gen['peak_rss_mib'] / r['peak_rss_mib']:.0%} | "
            + " | ".join(
                f"{by[m]['difference']:+.2f} [{by[m]['ci'][0]:+.2f}, {by[m]['ci'][1]:+.2f}]"
                for m in shown
            )
            + " |"
        )
    return rows


SIDES = {"trl": "TRL SFTTrainer", "trainer": "Trainer + DataCollatorForLanguageModeling"}


def _recipe(side: str, r: dict) -> str:
    if side == "trl":
        return f"full, 1 epoch, lr 5e-5, batch 4, {r['precision']}" + (
            ", grad. checkpointing" if r["gradient_checkpointing"] else ""
        )
    return "full, 1 epoch, lr 5e-5, batch 4, fp32, loss on every token" + (
        " (pad = EOS: EOS masked)" if r.get("eos_is_pad") else ""
    )


def main() -> None:
    children = {"_trl": side_trl, "_trainer": side_trainer, "_gentune": side_gentune}
    if len(sys.argv) > 1 and sys.argv[1] in children:
        print(json.dumps(children[sys.argv[1]](sys.argv[2:])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=["aclsum-title", "de-en"])
    ap.add_argument("--split", choices=["dev", "test"], default="test")
    ap.add_argument("--sides", nargs="+", choices=list(SIDES), default=list(SIDES))
    ap.add_argument("--out", default=None, help="keep runs and evaluations here")
    ap.add_argument("--gentune", nargs=argparse.REMAINDER, default=[], help="extra train flags")
    a = ap.parse_args()
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("this bench needs TRL: .venv/bin/pip install trl") from None
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="vs_trl-"))
    lines = []
    for name in a.sets:
        lines += bench_set(name, a.split, work, a.gentune, a.sides)
        print("\n".join(lines[-(5 + 2 * len(a.sides)) :]), flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
