"""Predictions and metrics for a run or a model: predictions.jsonl + metrics.json."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gentune.config import MAX_LENGTH, Decoding
from gentune.data.encode import encode_dataset
from gentune.data.records import Fields, Record, fingerprint, read_records
from gentune.data.tasks import PromptTemplate, get_task, prompt_record
from gentune.errors import DataError
from gentune.inference.generate import default_decoding, encode_prompts, generate
from gentune.inference.generate import stream as stream_text
from gentune.inference.load import Loaded, load_for_inference, resolve_template
from gentune.inference.report import write_report
from gentune.metrics import (
    METRICS,
    diversity,
    mean_length,
    paired_bootstrap,
    perplexity,
    text_metrics,
)
from gentune.models.load import context_length
from gentune.models.loss import corpus_nll
from gentune.rundir import is_run, write_json, write_jsonl
from gentune.tokenizer import source_pad_id


def predict(
    loaded: Loaded,
    template: PromptTemplate,
    records: list[Record],
    decoding: Decoding,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> list[dict]:
    """One dict per record: row, prompt (the exact text given to the model), output,
    reference (when there is one), and whether the model stopped by itself."""
    from tqdm.auto import tqdm

    encoded = encode_prompts(
        records, template, loaded.tokenizer, loaded.model, decoding.max_new_tokens
    )
    prompts = [ids for ids, _, _ in encoded]
    texts = [text for _, text, _ in encoded]
    shortened = [short for _, _, short in encoded]
    with tqdm(
        total=len(prompts),
        desc=f"generate ({Path(str(loaded.name)).name})",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        outs = generate(
            loaded.model,
            loaded.tokenizer,
            prompts,
            decoding,
            batch_size=batch_size,
            progress=bar.update,
        )
    n = decoding.num_return_sequences
    rows = []
    for i, (rec, text, short) in enumerate(zip(records, texts, shortened, strict=True)):
        group = outs[i * n : (i + 1) * n]
        row: dict[str, Any] = {
            "row": rec.where,
            "input": user_text(rec),
            "prompt": text,
            "output": group[0].text,
            "reference": template.reference(rec),
            "stopped": group[0].finished,
            "new_tokens": group[0].new_tokens,
            "prompt_shortened": short,
        }
        if n > 1:
            row["outputs"] = [g.text for g in group]
        rows.append(row)
    return rows


def user_text(rec) -> str:
    """What the user gave for a record: its input, its text, or its last user turn."""
    if rec.input is not None:
        return rec.input
    if rec.text is not None:
        return rec.text
    return next((m["content"] for m in reversed(rec.messages or ()) if m["role"] == "user"), "")


def reference_length(template: PromptTemplate, model) -> int:
    """The length limit references are encoded with at inference: the run's max_length
    (training's default for a plain model), within the model's context."""
    return min(template.max_length or MAX_LENGTH, context_length(model))


@torch.no_grad()
def corpus_perplexity(
    loaded: Loaded, template: PromptTemplate, records: list[Record], *, batch_size: int = 8
) -> tuple[float, int, list[str]]:
    """(perplexity over the references' target tokens, number of tokens, rows left out).

    Rows are encoded as in training (the run's max_length; training's default for a plain model); a row
    whose target cannot fit is left out of perplexity — and named in the third value."""
    max_length = reference_length(template, loaded.model)
    examples, report = encode_dataset(
        records, template, loaded.tokenizer, max_length=max_length, skip_long_targets=True
    )
    total, count = corpus_nll(loaded.model, examples, source_pad_id(loaded.tokenizer), batch_size)
    return perplexity(total, count), count, report.too_long


def score(
    spec: str,
    loaded: Loaded,
    template: PromptTemplate,
    records: list[Record],
    decoding: Decoding,
    out: Path,
    *,
    data: str,
    batch_size: int,
    progress: bool,
) -> tuple[dict, list[dict]]:
    """Predictions and metrics of one model on the records; writes both into `out`."""
    started = time.time()
    metrics: dict = {}
    rows: list[dict] = []
    scored = [r for r in records if r.text is None]  # free-text rows only get perplexity
    if scored:
        rows = predict(loaded, template, scored, decoding, batch_size=batch_size, progress=progress)
        outputs = [r["output"] for r in rows]
        if all(r["reference"] is not None for r in rows):
            metrics.update(text_metrics(outputs, [r["reference"] for r in rows]))
        else:
            metrics.update(diversity(outputs))
        metrics["stopped_by_eos"] = 100.0 * sum(r["stopped"] for r in rows) / len(rows)
    ppl, n_tok, left_out = corpus_perplexity(loaded, template, records, batch_size=batch_size)
    if left_out:
        print(
            f"gentune: warning: {len(left_out)} of {len(records)} rows left out of perplexity"
            f" (target longer than the {template.max_length or MAX_LENGTH}-token limit: "
            f"{', '.join(left_out[:3])}{' ...' if len(left_out) > 3 else ''})",
            file=sys.stderr,
        )
    metrics["perplexity"] = ppl
    order = get_task(template.task).metrics
    ordered = [k for k in order if k in metrics] + sorted(k for k in metrics if k not in order)
    result = {k: round(metrics[k], 4) if math.isfinite(metrics[k]) else None for k in ordered}
    result["meta"] = {
        "model": str(spec),
        "task": template.task,
        "headline": order[0],
        "data": str(data),
        "rows": len(records),
        "target_tokens": n_tok,
        "perplexity_rows": len(records) - len(left_out),
        "perplexity_rows_left_out": left_out,
        "prompts_shortened": sum(r["prompt_shortened"] for r in rows),
        "units": {k: asdict(METRICS[k]) for k in ordered if k in METRICS},
        "decoding": asdict(decoding),
        "seconds": round(time.time() - started, 2),
    }
    write_jsonl(out / "predictions.jsonl", rows)
    write_json(out / "metrics.json", result)
    return result, rows


def generate_outputs(
    spec: str,
    *,
    prompt: str | None = None,
    data: str | None = None,
    out: str | None = None,
    task: str | None = None,
    fields: Fields = Fields(),
    decoding_overrides: dict | None = None,
    batch_size: int = 8,
    stream: bool = True,
    progress: bool = True,
    precision: str = "fp32",
    quantize: str | None = None,
    **template_args,
) -> list[dict]:
    """`gentune generate`: one prompt, streamed to stdout (unless `stream` is off or several
    outputs are asked for), or every input of `data` into OUT/predictions.jsonl. Notes go to
    stderr."""
    loaded = load_for_inference(spec, precision=precision, quantize=quantize)
    template = resolve_template(loaded, task, **template_args)
    decoding = default_decoding(template, **(decoding_overrides or {}))
    if data and "max_new_tokens" not in (decoding_overrides or {}):
        print(f"gentune generate: {template.new_tokens_note()}", file=sys.stderr)
    if data:
        kind = get_task(template.task).kind
        records = read_records(data, kind=kind, fields=fields, require_output=False)
    else:
        records = [prompt_record(template, prompt or "")]
    if not data and decoding.num_return_sequences == 1 and stream:
        [(ids, _, shortened)] = encode_prompts(
            records, template, loaded.tokenizer, loaded.model, decoding.max_new_tokens
        )
        if shortened:
            print(
                "gentune generate: note: the input was shortened to the run's prompt limit "
                "(as training shortened it)",
                file=sys.stderr,
            )
        text = ""
        for piece in stream_text(loaded.model, loaded.tokenizer, ids, decoding):
            print(piece, end="", flush=True)
            text += piece
        print()
        return [{"row": records[0].where, "output": text}]
    rows = predict(
        loaded, template, records, decoding, batch_size=batch_size, progress=bool(data) and progress
    )
    if data and out:
        path = write_jsonl(Path(out) / "predictions.jsonl", rows)
        print(f"gentune: {len(rows)} predictions written to {path}")
    else:
        for r in rows:
            for text in r.get("outputs", [r["output"]]):
                print(text)
    return rows


def labelled_records(data: str, template, fields: Fields, limit: int | None) -> list[Record]:
    """The first `limit` rows of a labelled file; a row without a reference stops evaluation."""
    records = read_records(data, kind=get_task(template.task).kind, fields=fields)
    if limit:
        records = records[:limit]
    refs_missing = [r.where for r in records if template.reference(r) is None and r.text is None]
    if refs_missing:
        raise DataError(
            f"{refs_missing[0]}: no reference to score against "
            f"({len(refs_missing)} rows); evaluation needs labelled rows — use "
            "`gentune generate` for unlabelled inputs"
        )
    return records


@dataclass
class Evaluation:
    """Both sides of a comparison, kept for what reads them next (the report, the checks)."""

    result: dict  # the tuned model's metrics.json, with "comparison"
    comparison: dict
    records: list[Record]
    rows: list[dict]  # the tuned model's predictions
    base_rows: list[dict]
    template: PromptTemplate
    base_template: PromptTemplate
    decoding: Decoding
    loaded: Loaded | None  # None unless kept
    base: Loaded | None

    def report(self, spec: str, out: str | Path, sections: tuple[str, ...] = ()) -> Path:
        """OUT/report.html of the comparison (more HTML sections after the metrics)."""
        return write_report(
            Path(out) / "report.html",
            comparison=self.comparison,
            base_rows=self.base_rows,
            tuned_rows=self.rows,
            run_dir=spec if is_run(spec) else None,
            sections=sections,
        )


def evaluate(
    spec: str,
    data: str,
    out: str | Path,
    *,
    compare: str | None = None,
    **kwargs,
) -> dict:
    """Score a run or model on a labelled file; writes predictions.jsonl and metrics.json.

    With `compare` (a base model or another run), both are scored on the same rows with the
    same prompt; OUT/base/ holds the base's files, OUT/comparison.json the differences with
    bootstrap intervals, and OUT/report.html the report. Keywords: see `evaluate_models`."""
    ev = evaluate_models(spec, data, out, compare=compare, **kwargs)
    if compare:
        ev.report(spec, out)
    return ev.result


def evaluate_models(
    spec: str,
    data: str,
    out: str | Path,
    *,
    task: str | None = None,
    fields: Fields = Fields(),
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    loaded: Loaded | None = None,
    compare: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    decoding_overrides: dict | None = None,
    precision: str = "fp32",
    quantize: str | None = None,
    keep: bool = False,
    **template_args,
) -> Evaluation:
    """`evaluate` but the report: predictions.jsonl, metrics.json and, with `compare`, base/ and
    comparison.json; `keep` keeps both models loaded in the answer (else the run's model is
    freed before the base is loaded)."""
    out = Path(out)
    loaded = loaded or load_for_inference(spec, precision=precision, quantize=quantize)
    template = resolve_template(loaded, task, **template_args)
    records = labelled_records(data, template, fields, limit)
    for warning in training_overlap(loaded, data, records):
        print(f"gentune: warning: {warning}", file=sys.stderr)
    decoding = default_decoding(template, **(decoding_overrides or {}))
    if "max_new_tokens" not in (decoding_overrides or {}):
        print(f"gentune: {template.new_tokens_note()}", file=sys.stderr)
    opts: dict = {"data": data, "batch_size": batch_size, "progress": progress}
    result, rows = score(spec, loaded, template, records, decoding, out, **opts)
    ev = Evaluation(result, {}, records, rows, [], template, template, decoding, None, None)
    if not compare:
        return ev
    if keep:
        ev.loaded = loaded
    del loaded  # free the memory before loading the second model (unless kept)
    base = load_for_inference(compare, precision=precision, quantize=quantize)  # as the run
    base_template = base.template or template  # a plain base gets the run's own prompt
    base_result, base_rows = score(
        compare, base, base_template, records, decoding, out / "base", **opts
    )
    comparison = compare_results(
        template.task, base_result, result, base_rows, rows, samples=bootstrap, seed=seed
    )
    comparison.update({"model": str(spec), "base": str(compare), "data": str(data)})
    write_json(out / "comparison.json", comparison)
    result["comparison"] = comparison
    ev.comparison, ev.base_rows, ev.base_template = comparison, base_rows, base_template
    ev.base = base if keep else None
    return ev


def training_overlap(loaded: Loaded, data: str, records: list[Record]) -> list[str]:
    """Scoring a run on the rows it was trained on measures memory, not skill: say so."""
    trained = [d for d in (loaded.manifest or {}).get("data", []) if isinstance(d, dict)]
    if not trained:
        return []
    if fingerprint(data) == trained[0].get("sha256"):
        return [
            f"{data} is the file this run was trained on: the scores measure memorised "
            "rows; evaluate on held-out rows (RUN/heldout.jsonl when no --val was given)"
        ]
    return []


def compare_results(
    task: str,
    base: dict,
    tuned: dict,
    base_rows: list[dict],
    tuned_rows: list[dict],
    *,
    samples: int,
    seed: int,
) -> dict:
    """Per metric: both values, the difference, and its paired-bootstrap interval."""
    refs = [r["reference"] for r in tuned_rows]
    table = []
    for name in get_task(task).metrics:
        if tuned.get(name) is None or base.get(name) is None:  # absent or undefined (null)
            continue
        entry = {
            "metric": name,
            "base": base[name],
            "tuned": tuned[name],
            "difference": tuned[name] - base[name],
            "higher_is_better": METRICS[name].higher_is_better,
            "unit": METRICS[name].unit,
        }
        if name == "length" and refs and all(x is not None for x in refs):
            entry["unit"] += f"; references: {mean_length(refs):.2f}"
        if (
            refs
            and all(x is not None for x in refs)
            and name not in ("perplexity", "stopped_by_eos", "length")
        ):
            boot = paired_bootstrap(
                name,
                [r["output"] for r in base_rows],
                [r["output"] for r in tuned_rows],
                refs,
                samples=samples if name != "ter" else min(samples, 200),
                seed=seed,
            )
            entry.update(
                ci=boot["ci"],
                base_ci=boot["base_ci"],
                tuned_ci=boot["tuned_ci"],
                p_not_better=boot["p_not_better"],
                samples=boot["samples"],
            )
        table.append(entry)
    return {"task": task, "rows": len(tuned_rows), "metrics": table, "seed": seed}
