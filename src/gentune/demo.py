"""`gentune demo`: LoRA fine-tuning of the embedded model on ACLSum (abstract → title), then the
base and the fine-tuned model scored on the validation split, side by side."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from gentune import DEFAULT_MODEL
from gentune.config import TrainConfig
from gentune.errors import UsageError
from gentune.inference.evaluate import evaluate
from gentune.rundir import write_jsonl
from gentune.training.train import train

INSTRUCTION = "Write the title of the research paper with this abstract."


def _detok(sentences: list[str]) -> str:
    """ACLSum sentences are tokenized ("word ." / "( NER )"); join them back into prose."""
    text = " ".join(s.strip() for s in sentences)
    text = re.sub(r" ([.,;:!?%)\]])", r"\1", text)
    text = re.sub(r"([(\[]) ", r"\1", text)
    return re.sub(r" (n't|'s|'re|'ve|'ll|'d)\b", r"\1", text)


def aclsum_root() -> Path:
    """ACLSum's data folder, located with importlib; the package is not imported (its own
    dependencies are not needed)."""
    spec = importlib.util.find_spec("aclsum")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            "the demo needs the ACLSum data: run `pip install --no-deps aclsum` "
            "(or `./dev setup`, which installs it)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "dataset"


def aclsum_rows(split: str, target: str = "title") -> list[dict]:
    """Rows {input: abstract, output: target} of one split (train, val, test); target is
    "title" or "summary" (the three expert aspect summaries joined)."""
    rows = []
    with (aclsum_root() / f"{split}.jsonl").open() as src:
        for line in src:
            doc = json.loads(line)
            if target == "title":
                output = doc["title"]
            else:
                output = " ".join(
                    doc["summary"][k].strip() for k in ("challenge", "approach", "outcome")
                )
            rows.append({"input": _detok(doc["sentences"]["abstract"]), "output": output})
    return rows


def write_demo_data(dest: str | Path) -> list[Path]:
    """All ACLSum splits as JSONL, for both targets: aclsum-{title,summary}-{train,val,test}."""
    dest = Path(dest)
    return [
        write_jsonl(dest / f"aclsum-{target}-{split}.jsonl", aclsum_rows(split, target))
        for target in ("title", "summary")
        for split in ("train", "val", "test")
    ]


def aclsum_files(dest: Path) -> tuple[Path, Path]:
    """ACLSum's train and validation splits as JSONL (input = abstract, output = title)."""
    return (
        write_jsonl(dest / "aclsum-train.jsonl", aclsum_rows("train")),
        write_jsonl(dest / "aclsum-val.jsonl", aclsum_rows("val")),
    )


def format_table(comparison: dict) -> str:
    """The comparison as a Markdown table: both values, the difference and its interval."""
    lines = [
        "| metric | base | fine-tuned | difference (95% CI) | better |",
        "|---|---|---|---|---|",
    ]
    for m in comparison["metrics"]:
        ci = m.get("ci")
        hib = m["higher_is_better"]
        if hib is None:
            verdict = f"no direction ({m['unit']})"
        else:
            tuned_wins = (m["difference"] > 0) == hib and m["difference"] != 0
            verdict = (
                "fine-tuned" if tuned_wins else "base" if m["difference"] else "tie"
            ) + f" ({'higher' if hib else 'lower'} is better)"
        lines.append(
            f"| {m['metric']} | {m['base']:.2f} | {m['tuned']:.2f} | {m['difference']:+.2f}"
            + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
            + f" | {verdict} |"
        )
    return "\n".join(lines)


def demo(
    out: str | Path = "runs/demo",
    *,
    epochs: float = 2.0,
    max_steps: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """The demo: LoRA-train the embedded model on ACLSum titles, then score it and the base on
    the validation split; returns the comparison."""
    out = Path(out)
    train_file, val_file = aclsum_files(out / "data")
    cfg = TrainConfig(
        task="summarization",
        data=str(train_file),
        val=str(val_file),
        out=str(out / "run"),
        model=DEFAULT_MODEL,
        method="lora",
        instruction=INSTRUCTION,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=8,
        max_length=384,
        progress=progress,
        eval_generate=0,  # the full comparison runs after training
        overwrite=True,
    )  # the demo replaces its own earlier run
    log(f"gentune demo: LoRA fine-tuning {DEFAULT_MODEL} on ACLSum (abstract -> title)")
    run = train(cfg, log=log)
    log("gentune demo: scoring the fine-tuned and the base model on the validation split")
    result = evaluate(
        str(run),
        str(val_file),
        out / "eval",
        limit=limit,
        progress=progress,
        compare=DEFAULT_MODEL,  # new tokens capped from the run's titles, for both models
    )
    comparison = result["comparison"]
    table = format_table(comparison)
    (out / "comparison.md").write_text(
        f"# gentune demo: {DEFAULT_MODEL}, ACLSum abstract -> title, "
        f"{comparison['rows']} validation rows\n\n{table}\n"
    )
    log("\n" + table + "\n")
    log(
        f"gentune demo: written {out}/comparison.md and {out}/eval/report.html "
        f"(predictions: {out}/eval/predictions.jsonl, {out}/eval/base/predictions.jsonl)"
    )
    return comparison
