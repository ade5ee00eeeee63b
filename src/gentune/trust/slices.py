"""Where is the tuned model better? Every metric, base against tuned with its paired-bootstrap
interval, per slice of the evaluated rows: input-length and target-length quartiles, distance
to the training data (each input's highest word-3-gram Jaccard similarity to any training
input, in tertiles: near / mid / far) and, for rows of several files (a mixed run's
RUN/heldout.jsonl names each row's file), the source file. Plus the fall-off curve: the
per-row score of both models by distance to the training rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gentune.data.checks import nearest_similarity, source_text
from gentune.data.records import Record
from gentune.data.tasks import get_task
from gentune.metrics import METRICS, paired_bootstrap, row_score

UNSCORED = ("perplexity", "stopped_by_eos", "length")  # not per-row text metrics
CURVE_BINS = 5


def text_metric_names(task: str) -> list[str]:
    """The task's metrics that score output text against references."""
    return [m for m in get_task(task).metrics if m not in UNSCORED]


def quantile_labels(values: Sequence[float], q: int, unit: str, names=None) -> list[str]:
    """Each value's quantile bin (q equal-count bins by rank, ties kept together), labelled
    with its range: 'Q2 (41-63 words)'."""
    v = np.asarray(values, dtype=float)
    ranks = np.argsort(np.argsort(v, kind="stable"), kind="stable")
    bins = np.minimum(ranks * q // max(len(v), 1), q - 1)
    for value in np.unique(v):  # equal values share one bin: their middle one
        bins[v == value] = int(np.median(bins[v == value]))
    present = sorted(set(bins.tolist()))
    if names and len(present) < len(names):  # ties merged bins: name what is left by rank
        names = {2: (names[0], names[-1]), 1: ("all",)}[len(present)]
        names = dict(zip(present, names, strict=True))
    labels = []
    for b in present:
        members = v[bins == b]
        name = names[b] if names else f"Q{b + 1}"
        labels.append((b, f"{name} ({members.min():.3g}-{members.max():.3g} {unit})"))
    by_bin = dict(labels)
    return [by_bin[int(b)] for b in bins]


def row_sources(data: str, records: Sequence[Record]) -> list[str]:
    """Each row's file: a JSONL row's own `source` field (file:row, as RUN/heldout.jsonl and
    mixed data write it) where there is one, else the file it was read from."""
    named: dict[int, str] = {}
    if str(data).endswith(".jsonl"):
        try:
            for n, line in enumerate(Path(data).read_text().splitlines(), 1):
                src = json.loads(line).get("source") if line.strip() else None
                if isinstance(src, str):
                    named[n] = Path(src.rsplit(":", 1)[0]).name
        except (OSError, ValueError, AttributeError):
            named = {}
    return [named.get(r.row, Path(r.source).name) for r in records]


def slice_labels(
    records: Sequence[Record], references: Sequence[str], similarity: Sequence[float] | None
) -> dict[str, list[str]]:
    """Slice family -> each row's label."""
    families = {
        "input length": quantile_labels([len(source_text(r).split()) for r in records], 4, "words"),
        "target length": quantile_labels([len(t.split()) for t in references], 4, "words"),
    }
    if similarity is not None:
        families["distance to training"] = quantile_labels(
            similarity, 3, "similarity", names=("far", "mid", "near")
        )
    return families


def slices(
    task: str,
    records: Sequence[Record],
    base_rows: Sequence[dict],
    tuned_rows: Sequence[dict],
    *,
    train: Sequence[Record] | None,
    sources: Sequence[str],
    samples: int,
    seed: int,
) -> dict:
    """The slice table (one entry per family, label and metric) and the fall-off curve."""
    refs = [r["reference"] for r in tuned_rows]
    base_out = [r["output"] for r in base_rows]
    tuned_out = [r["output"] for r in tuned_rows]
    similarity = nearest_similarity(train, records) if train else None
    families = slice_labels(records, refs, similarity)
    if len(set(sources)) > 1:
        families["source file"] = list(sources)
    table = []
    for family, labels in families.items():
        for label in sorted(set(labels), key=lambda x: (not x.startswith("Q"), x)):
            idx = [i for i, x in enumerate(labels) if x == label]
            for name in text_metric_names(task):
                boot = paired_bootstrap(
                    name,
                    [base_out[i] for i in idx],
                    [tuned_out[i] for i in idx],
                    [refs[i] for i in idx],
                    samples=samples if name.startswith("rouge") else min(samples, 200),
                    seed=seed,
                )
                table.append(_entry(family, label, len(idx), name, boot))
    result: dict = {"table": table, "families": list(families)}
    if similarity is not None:
        result["curve"] = falloff(task, similarity, base_out, tuned_out, refs)
        result["similarity_mean"] = float(np.mean(similarity))
    else:
        result["note"] = "no training rows: no distance-to-training slices"
    return result


def _entry(family: str, label: str, n: int, name: str, boot: dict) -> dict:
    return {
        "family": family,
        "slice": label,
        "rows": n,
        "metric": name,
        "base": boot["base"],
        "tuned": boot["tuned"],
        "difference": boot["difference"],
        "ci": boot["ci"],
        "base_ci": boot["base_ci"],
        "tuned_ci": boot["tuned_ci"],
        "higher_is_better": METRICS[name].higher_is_better,
    }


def falloff(
    task: str,
    similarity: Sequence[float],
    base_out: Sequence[str],
    tuned_out: Sequence[str],
    refs: Sequence[str],
) -> dict:
    """Per-row score of both models (ROUGE-L, chrF for translation) in equal-count bins of
    similarity to the training rows, and how much the tuned model's score falls from the
    nearest bin to the farthest (and the base's, beside it)."""
    sim = np.asarray(similarity, dtype=float)
    sb = np.array([row_score(o, r, task) for o, r in zip(base_out, refs, strict=True)])
    st = np.array([row_score(o, r, task) for o, r in zip(tuned_out, refs, strict=True)])
    order = np.argsort(sim, kind="stable")
    bins = [b for b in np.array_split(order, min(CURVE_BINS, len(order))) if b.size]
    result: dict = {
        "score": "chrF" if task == "translation" else "ROUGE-L F1",
        "points": [
            {
                "similarity": float(sim[b].mean()),
                "rows": int(b.size),
                "base": float(sb[b].mean()),
                "tuned": float(st[b].mean()),
            }
            for b in bins
        ],
    }
    ends = result["points"][0], result["points"][-1]
    result["falloff_tuned"] = ends[1]["tuned"] - ends[0]["tuned"]
    result["falloff_base"] = ends[1]["base"] - ends[0]["base"]
    return result
