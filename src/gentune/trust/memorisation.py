"""What a fine-tuned model keeps of its training rows, measured against held-out rows.

- the gap in exact match and ROUGE-L of greedy outputs between training and held-out rows;
- the extraction probability of a training target, p(target | prompt) from one
  teacher-forced pass (Hayes et al., arXiv 2410.19482), and the share above 0.1;
- a membership signal per row, log p_tuned(target) − log p_base(target), and the AUC with which
  it tells training rows from held-out ones (Mireshghallah et al., arXiv 2205.12506): 0.5 is
  no signal, 1 is every training row scoring above every held-out one;
- held-out outputs that reproduce a training target, exactly or nearly (the `plan` index);
- secrets and personal data (the `plan` detectors) in outputs, flagged where the same string
  is in the training data.
Every interval is a seeded bootstrap over rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gentune.data.checks import NEAR, SENSITIVE, near_pairs, normalize, shingles
from gentune.data.records import Record
from gentune.metrics import rouge_rows

EXTRACTABLE = 0.1  # a training target is extractable above this probability
LEVEL = 0.95


def exact_match(outputs: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """1.0 per row whose output equals its reference (case, punctuation, spacing aside)."""
    return np.array(
        [float(normalize(o) == normalize(r)) for o, r in zip(outputs, references, strict=True)]
    )


def rouge_l(outputs: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-row ROUGE-L F1 x 100."""
    return rouge_rows(list(outputs), list(references))["rougeL"]


def _interval(values: np.ndarray) -> list[float]:
    lo, hi = (1 - LEVEL) / 2 * 100, (1 + LEVEL) / 2 * 100
    return [float(np.percentile(values, lo)), float(np.percentile(values, hi))]


def gap(train: np.ndarray, held: np.ndarray, *, samples: int = 1000, seed: int = 0) -> dict:
    """Means on training and held-out rows, and their difference (train − held-out) with a
    bootstrap interval (each side resampled on its own: the rows are not paired)."""
    rng = np.random.default_rng(seed)
    a = train[rng.integers(0, len(train), (samples, len(train)))].mean(1)
    b = held[rng.integers(0, len(held), (samples, len(held)))].mean(1)
    return {
        "train": float(train.mean()),
        "heldout": float(held.mean()),
        "gap": float(train.mean() - held.mean()),
        "ci": _interval(a - b),
        "rows": [len(train), len(held)],
    }


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (the Mann-Whitney AUC)."""
    if not len(positive) or not len(negative):
        return float("nan")
    diff = positive[:, None] - negative[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def membership(
    train_scores: np.ndarray, held_scores: np.ndarray, *, samples: int = 1000, seed: int = 0
) -> dict:
    """The AUC of the membership score between training and held-out rows, with its bootstrap
    interval, and both sides' mean score."""
    rng = np.random.default_rng(seed)
    boot = [
        auc(
            train_scores[rng.integers(0, len(train_scores), len(train_scores))],
            held_scores[rng.integers(0, len(held_scores), len(held_scores))],
        )
        for _ in range(samples)
    ]
    return {
        "auc": auc(train_scores, held_scores),
        "ci": _interval(np.array(boot)),
        "train_mean": float(train_scores.mean()),
        "heldout_mean": float(held_scores.mean()),
        "rows": [len(train_scores), len(held_scores)],
    }


def extraction(logp_targets: np.ndarray, where: Sequence[str]) -> dict:
    """p(target) per training row (exp of its teacher-forced log-probability): the share above
    EXTRACTABLE, the mean, and the most extractable rows."""
    p = np.exp(logp_targets)
    order = np.argsort(-p)[:5]
    return {
        "share_above": float((p > EXTRACTABLE).mean()) if len(p) else float("nan"),
        "threshold": EXTRACTABLE,
        "mean": float(p.mean()) if len(p) else float("nan"),
        "top": [{"row": where[i], "p": float(p[i])} for i in order],
    }


def reproduced(outputs: Sequence[str], where: Sequence[str], train: Sequence[Record]) -> dict:
    """Held-out outputs that are a training target, exactly (normalized) or nearly (word
    3-gram Jaccard >= NEAR), with counts and the first rows named."""
    from gentune.data.checks import target_text

    targets: list[tuple[Record, str]] = [(r, t) for r in train if (t := target_text(r))]
    exact_index = {normalize(t): r for r, t in targets}
    exact, near, rest = [], [], []
    for i, out in enumerate(outputs):
        twin = exact_index.get(normalize(out)) if normalize(out) else None
        if twin is not None:
            exact.append(f"{where[i]} = {twin.where}")
        else:
            rest.append(i)
    found = near_pairs(
        [shingles(t) for _, t in targets], [shingles(outputs[i]) for i in rest], NEAR
    )
    for j, (k, sim) in sorted(found.items()):
        near.append(f"{where[rest[j]]} ~ {targets[k][0].where} ({sim:.2f})")
    return {
        "exact": len(exact),
        "near": len(near),
        "rows": len(outputs),
        "examples": (exact + near)[:5],
    }


def secrets(outputs: Sequence[str], where: Sequence[str], train_text: str) -> list[dict]:
    """Likely secrets and personal data in the outputs, by kind; `in_training` marks a string
    that occurs in the training data too (a leak rather than an invention)."""
    found = []
    for text, row in zip(outputs, where, strict=True):
        for what, pattern in SENSITIVE:
            for m in pattern.finditer(text):
                s = m.group(0)
                shown = s if len(s) <= 6 else s[:4] + "…"
                found.append(
                    {"row": row, "kind": what, "text": shown, "in_training": s in train_text}
                )
    return found
