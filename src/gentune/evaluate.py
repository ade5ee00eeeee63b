"""Predictions and metrics for a run or a model: predictions.jsonl + metrics.json."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .config import Decoding
from .data import Fields, Record, read_records
from .encode import collate, encode_dataset, encode_prompt
from .generate import generate
from .metrics import METRICS, perplexity, text_metrics
from .models import context_length, token_nll
from .runs import Loaded, load_for_inference, write_json
from .tasks import PromptTemplate, build_template, get_task


def resolve_template(loaded: Loaded, task: str | None, **template_args) -> PromptTemplate:
    """The run's saved template, or one built for `task` from the model's tokenizer."""
    if loaded.template is not None:
        if task and task != loaded.template.task:
            raise ValueError(f"{loaded.name} was trained for task {loaded.template.task!r}, "
                             f"not {task!r}; drop --task")
        return loaded.template
    if not task:
        raise ValueError(f"{loaded.name} is a plain model: name the task with --task "
                         "(summarization, translation, dialogue, text)")
    return build_template(get_task(task), loaded.tokenizer, **template_args)


def default_decoding(template: PromptTemplate, **overrides) -> Decoding:
    task = get_task(template.task)
    base = Decoding(max_new_tokens=task.max_new_tokens, do_sample=task.do_sample)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def predict(loaded: Loaded, template: PromptTemplate, records: list[Record],
            decoding: Decoding, *, batch_size: int = 8, progress: bool = True) -> list[dict]:
    """One dict per record: row, prompt (the exact text given to the model), output,
    reference (when there is one), and whether the model stopped by itself."""
    from tqdm.auto import tqdm

    room = context_length(loaded.model) - decoding.max_new_tokens
    prompts, texts, shortened = [], [], 0
    for rec in records:
        ids, text, short = encode_prompt(rec, template, loaded.tokenizer, max_length=room)
        prompts.append(ids)
        texts.append(text)
        shortened += short
    with tqdm(total=len(prompts), desc=f"generate ({Path(str(loaded.name)).name})",
              disable=not progress, dynamic_ncols=True) as bar:
        outs = generate(loaded.model, loaded.tokenizer, prompts, decoding,
                        batch_size=batch_size, progress=bar.update)
    rows = []
    for rec, text, gen in zip(records, texts, outs, strict=True):
        rows.append({"row": rec.where, "prompt": text, "output": gen.text,
                     "reference": template.reference(rec), "stopped": gen.finished,
                     "new_tokens": gen.new_tokens})
    if shortened:
        rows[0].setdefault("note", f"{shortened} prompts shortened to fit the context")
    return rows


@torch.no_grad()
def corpus_perplexity(loaded: Loaded, template: PromptTemplate, records: list[Record], *,
                      batch_size: int = 8, max_length: int = 1024) -> tuple[float, int]:
    """(perplexity over the references' target tokens, number of tokens)."""
    max_length = min(max_length, context_length(loaded.model))
    examples, _ = encode_dataset(records, template, loaded.tokenizer, max_length=max_length,
                                 skip_long_targets=True)
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for i in range(0, len(order), batch_size):
        batch = collate([examples[j] for j in order[i:i + batch_size]],
                        loaded.tokenizer.pad_token_id)
        nll, n = token_nll(loaded.model, batch)
        total += float(nll)
        count += n
    return perplexity(total, count), count


def evaluate(spec: str, data: str, out: str | Path, *, task: str | None = None,
             fields: Fields = Fields(), limit: int | None = None, batch_size: int = 8,
             progress: bool = True, loaded: Loaded | None = None,
             decoding_overrides: dict | None = None, **template_args) -> dict:
    """Score a run or model on a labelled file; writes predictions.jsonl and metrics.json."""
    started = time.time()
    loaded = loaded or load_for_inference(spec)
    template = resolve_template(loaded, task, **template_args)
    kind = get_task(template.task).kind
    records = read_records(data, kind=kind, fields=fields)
    if limit:
        records = records[:limit]
    refs_missing = [r.where for r in records if template.reference(r) is None
                    and r.text is None]
    if refs_missing:
        raise ValueError(f"{refs_missing[0]}: no reference to score against "
                         f"({len(refs_missing)} rows); evaluation needs labelled rows — use "
                         "`gentune generate` for unlabelled inputs")
    decoding = default_decoding(template, **(decoding_overrides or {}))
    metrics: dict = {}
    rows: list[dict] = []
    scored = [r for r in records if r.text is None]  # free-text rows only get perplexity
    if scored:
        rows = predict(loaded, template, scored, decoding, batch_size=batch_size,
                       progress=progress)
        metrics.update(text_metrics([r["output"] for r in rows],
                                    [r["reference"] for r in rows]))
        metrics["stopped_by_eos"] = 100.0 * sum(r["stopped"] for r in rows) / len(rows)
    ppl, n_tok = corpus_perplexity(loaded, template, records, batch_size=batch_size)
    metrics["perplexity"] = ppl
    result = {k: round(v, 4) for k, v in metrics.items()}
    result["meta"] = {
        "model": str(spec),
        "task": template.task,
        "data": str(data),
        "rows": len(records),
        "target_tokens": n_tok,
        "units": {k: asdict(METRICS[k]) for k in metrics if k in METRICS},
        "decoding": asdict(decoding),
        "seconds": round(time.time() - started, 2),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "predictions.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    write_json(out / "metrics.json", result)
    return result
