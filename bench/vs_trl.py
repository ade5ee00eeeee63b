"""gentune's defaults against TRL's SFTTrainer recipe, on the same rows, in one invocation.

    .venv/bin/pip install trl          # only for this bench (gentune does not depend on it)
    .venv/bin/python bench/vs_trl.py [--sets aclsum-title de-en] [--split test]

For each held-out set (bench/heldout.py), both sides train on its `train` rows from the embedded
SmolLM2-135M-Instruct:

- **TRL**: `SFTTrainer` as its documentation recipe runs it: prompt-completion rows (so the
  loss is on the completion only), full fine-tuning, 1 epoch, learning rate 5e-5, batch 4, and
  SFTConfig's own defaults for the rest (bf16 autocast, gradient checkpointing, max_length
  1024; on a machine without a GPU, `use_cpu=True`, as TRL's error message there asks). Its prompts are gentune's prompt text for the same rows, so
  both models are asked the same thing at training and at test time.
- **gentune**: `gentune train --task T --data train.jsonl --out RUN` with every default (it
  holds 10 % of the rows out for its own validation, as a user's run does).

Each side trains in its own process; "training s" is the wall time from the rows on disk to the
fine-tuned model saved on disk (model loading, tokenizing, gentune's validation pass and its
final resumable checkpoint included; Python start-up and imports not), "peak RSS" the
process's own. Then `gentune evaluate RUN --data SPLIT.jsonl --compare
TRL_MODEL` scores both on the `--split` rows (test: rows no default was chosen on) with the
same prompt, greedy decoding and new-token cap, and gives paired-bootstrap intervals of the
differences.
"""

from __future__ import annotations

import argparse
import json
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


def side_trl(args: list[str]) -> dict:
    """Train with TRL's SFTTrainer (in this process); returns seconds and peak RSS."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args(args)
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from gentune import DEFAULT_MODEL
    from gentune.cli import build_parser
    from gentune.data.records import Record
    from gentune.data.tasks import build_template, get_task
    from gentune.models.registry import resolve_model

    spec = heldout.SETS[a.set]
    flags = vars(build_parser().parse_args(["train", *_train_flags(spec), "--data", a.data]))
    start = time.perf_counter()
    path = resolve_model(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    template = build_template(
        get_task(spec.task),
        tokenizer,
        instruction=flags.get("instruction"),
        source_lang=flags.get("source_lang"),
        target_lang=flags.get("target_lang"),
    )
    rows = []
    for i, line in enumerate(Path(a.data).read_text().splitlines(), start=1):
        row = json.loads(line)
        if "messages" in row:
            record = Record(source=a.data, row=i, messages=tuple(row["messages"]))
        else:
            record = Record(source=a.data, row=i, input=row["input"], output=row["output"])
        prompt = "".join(s.text for s in template.prompt_segments(record, tokenizer))
        rows.append({"prompt": prompt, "completion": template.reference(record)})
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


def _train_flags(spec) -> list[str]:
    return ["--task", spec.task, *spec.flags, "--out", "unused"]


def side_gentune(args: list[str]) -> dict:
    """`gentune train` with every default (in this process); seconds and peak RSS."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    a, extra = ap.parse_known_args(args)  # the rest: gentune train flags
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
    }


def _child(side: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, f"_{side}", *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _fmt_ci(entry: dict, key: str, value: str) -> str:
    ci = entry.get(key)
    return f"{entry[value]:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{entry[value]:.2f}"


def bench_set(name: str, split: str, work: Path, extra: list[str]) -> list[str]:
    spec = heldout.SETS[name]
    files = heldout.write(name, work / "data")
    trl_dir, run = work / f"{name}-trl", work / f"{name}-gentune"
    print(f"[{name}] TRL SFTTrainer ...", file=sys.stderr)
    trl = _child("trl", "--set", name, "--data", str(files["train"]), "--out", str(trl_dir))
    print(f"[{name}] gentune train (defaults) ...", file=sys.stderr)
    gen = _child("gentune", "--set", name, "--data", str(files["train"]), "--out", str(run), *extra)
    print(f"[{name}] gentune evaluate --compare ...", file=sys.stderr)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gentune",
            "evaluate",
            str(run),
            "--data",
            str(files[split]),
            "--out",
            str(work / f"{name}-eval"),
            "--compare",
            str(trl_dir),
            "--no-progress",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    comparison = json.loads((work / f"{name}-eval" / "comparison.json").read_text())
    by_metric = {m["metric"]: m for m in comparison["metrics"]}
    shown = [m for m in ("rougeL", "bleu", "chrf") if m in by_metric]
    rows = [
        f"\n{name} ({spec.task}): {sum(1 for _ in files['train'].open())} training rows, "
        f"{comparison['rows']} {split} rows\n",
        "| side | recipe | training s | peak RSS MiB | "
        + " | ".join(f"{m} [95% CI]" for m in shown)
        + " |",
        "|---|---|---|---|" + "---|" * len(shown),
        f"| TRL SFTTrainer | full, 1 epoch, lr 5e-5, batch 4, {trl['precision']}"
        + (", grad. checkpointing" if trl["gradient_checkpointing"] else "")
        + f" | {trl['seconds']:.1f} | {trl['peak_rss_mib']:.0f} | "
        + " | ".join(_fmt_ci(by_metric[m], "base_ci", "base") for m in shown)
        + " |",
        f"| gentune | defaults ({gen['method']}, {gen['precision']}, {gen['steps']} steps) "
        f"| {gen['seconds']:.1f} | {gen['peak_rss_mib']:.0f} | "
        + " | ".join(_fmt_ci(by_metric[m], "tuned_ci", "tuned") for m in shown)
        + " |",
        f"| gentune − TRL | | {gen['seconds'] / trl['seconds']:.0%} of TRL's time | "
        f"{gen['peak_rss_mib'] / trl['peak_rss_mib']:.0%} | "
        + " | ".join(
            f"{by_metric[m]['difference']:+.2f} [{by_metric[m]['ci'][0]:+.2f}, "
            f"{by_metric[m]['ci'][1]:+.2f}]"
            for m in shown
        )
        + " |",
    ]
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_trl", "_gentune"):
        side = side_trl if sys.argv[1] == "_trl" else side_gentune
        print(json.dumps(side(sys.argv[2:])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=["aclsum-title", "de-en"])
    ap.add_argument("--split", choices=["dev", "test"], default="test")
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
        lines += bench_set(name, a.split, work, a.gentune)
        print("\n".join(lines[-6:]), flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
