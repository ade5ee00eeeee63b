"""Metric functions, corpus-level and offline. Each metric names its unit and direction.

ROUGE comes from `rouge-score` (F-measure, with stemming, averaged over rows); BLEU and chrF from
`sacrebleu`'s corpus functions; perplexity is exp(Σ nll / Σ target tokens), never a mean of
batch means. Scores are on a 0–100 scale, perplexity aside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_is_better: bool


METRICS = {
    "rouge1": Metric("rouge1", "F1 x 100", True),
    "rouge2": Metric("rouge2", "F1 x 100", True),
    "rougeL": Metric("rougeL", "F1 x 100", True),
    "bleu": Metric("bleu", "sacreBLEU, 0-100", True),
    "chrf": Metric("chrf", "chrF, 0-100", True),
    "perplexity": Metric("perplexity", "exp(nll per target token)", False),
}


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)
        for k in totals:
            totals[k] += scores[k].fmeasure
    n = max(len(predictions), 1)
    return {k: 100.0 * v / n for k, v in totals.items()}


def bleu(predictions: list[str], references: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(predictions, [references]).score


def chrf(predictions: list[str], references: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_chrf(predictions, [references]).score


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(Σ nll / Σ tokens) over the whole corpus."""
    if n_tokens <= 0:
        return float("nan")
    return math.exp(nll_sum / n_tokens)


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    out = rouge(predictions, references)
    out["bleu"] = bleu(predictions, references)
    out["chrf"] = chrf(predictions, references)
    return out
