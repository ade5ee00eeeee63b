"""Metric functions, corpus-level and offline. Each metric names its unit and direction.

ROUGE comes from `rouge-score` (F-measure with stemming, averaged over rows); BLEU, chrF and TER
from `sacrebleu`'s corpus functions; perplexity is exp(Σ nll / Σ target tokens), never a mean of
batch means. Scores are on a 0–100 scale; perplexity, TER and lengths have their own units.
Base-vs-fine-tuned differences get seeded paired-bootstrap confidence intervals.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_is_better: bool | None  # None: no direction (e.g. length: compare with references)


METRICS = {
    "rouge1": Metric("rouge1", "F1 x 100", True),
    "rouge2": Metric("rouge2", "F1 x 100", True),
    "rougeL": Metric("rougeL", "F1 x 100", True),
    "rougeLsum": Metric("rougeLsum", "F1 x 100, sentence-split", True),
    "bleu": Metric("bleu", "sacreBLEU, 0-100", True),
    "chrf": Metric("chrf", "chrF, 0-100", True),
    "ter": Metric("ter", "TER, edits per 100 reference words", False),
    "distinct1": Metric("distinct1", "unique unigrams / unigrams x 100", True),
    "distinct2": Metric("distinct2", "unique bigrams / bigrams x 100", True),
    "length": Metric("length", "mean words per output", None),
    "perplexity": Metric("perplexity", "exp(nll per target token)", False),
    "stopped_by_eos": Metric("stopped_by_eos", "% of outputs ended by the model", True),
}

# metrics that compare an output with its reference (the rest describe outputs or the model)
REFERENCE_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "ter")


def _sentences(text: str) -> str:
    """One sentence per line, as ROUGE-Lsum expects."""
    return "\n".join(s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s)


class RougeTokenizer:
    """rouge-score's tokenizer for every script. Its default keeps only [a-z0-9], so Chinese,
    Arabic or emoji text scores 0 against itself. Here ASCII words go through rouge-score's own
    tokenizer (lower-cased, Porter-stemmed: English scores are unchanged); words of other
    scripts are kept whole; characters of scripts written without spaces (Han, kana, Thai, Lao,
    Khmer, Myanmar) and symbols such as emoji are one token each; punctuation is dropped."""

    def __init__(self):
        from rouge_score.tokenizers import DefaultTokenizer

        self._ascii = DefaultTokenizer(use_stemmer=True)

    def tokenize(self, text: str) -> list[str]:
        import unicodedata

        tokens: list[str] = []
        word: list[str] = []

        def flush():
            if word:
                w = "".join(word)
                tokens.extend(self._ascii.tokenize(w) if w.isascii() else [w])
                word.clear()

        for ch in text.lower():
            cat = unicodedata.category(ch)
            if ch.isascii() and not ch.isalnum():
                flush()
            elif _UNSPACED.match(ch) or cat.startswith("S"):
                flush()
                tokens.append(ch)
            elif cat[0] in "LNM":
                word.append(ch)
            else:  # spaces, punctuation, joiners and variation selectors
                flush()
        flush()
        return tokens


# scripts written without spaces between words: one token per character
_UNSPACED = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]"
)

_SCORER = None


def _scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(
            ["rouge1", "rouge2", "rougeL", "rougeLsum"], tokenizer=RougeTokenizer()
        )
    return _SCORER


def rouge_rows(predictions: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """Per-row ROUGE F1 × 100 (the corpus score is their mean)."""
    keys = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    out = {k: np.zeros(len(predictions)) for k in keys}
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        scores = _scorer().score(_sentences(ref), _sentences(pred))
        for k in keys:
            out[k][i] = 100.0 * scores[k].fmeasure
    return out


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Corpus ROUGE-1/2/L/Lsum: the mean of per-row F1 x 100."""
    return {
        k: float(v.mean()) if len(v) else 0.0
        for k, v in rouge_rows(predictions, references).items()
    }


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus sacreBLEU (0-100)."""
    import sacrebleu

    return sacrebleu.corpus_bleu(predictions, [references]).score


def chrf(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF (0-100)."""
    import sacrebleu

    return sacrebleu.corpus_chrf(predictions, [references]).score


def ter(predictions: list[str], references: list[str]) -> float:
    """Corpus TER (edits per 100 reference words; lower is better)."""
    import sacrebleu

    return sacrebleu.corpus_ter(predictions, [references]).score


def distinct(predictions: list[str], n: int) -> float:
    """Unique n-grams / all n-grams over the corpus, × 100 (diversity of the outputs)."""
    grams = [
        tuple(words[i : i + n])
        for p in predictions
        for words in [p.lower().split()]
        for i in range(len(words) - n + 1)
    ]
    return 100.0 * len(set(grams)) / len(grams) if grams else 0.0


def mean_length(texts: list[str]) -> float:
    """Mean words per text."""
    return float(np.mean([len(t.split()) for t in texts])) if texts else 0.0


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(Σ nll / Σ tokens) over the whole corpus."""
    if n_tokens <= 0:
        return float("nan")
    return math.exp(nll_sum / n_tokens)


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Every reference-based metric of the outputs, corpus-level."""
    out = rouge(predictions, references)
    out["bleu"] = bleu(predictions, references)
    out["chrf"] = chrf(predictions, references)
    out["ter"] = ter(predictions, references)
    out.update(diversity(predictions))
    return out


def diversity(predictions: list[str]) -> dict[str, float]:
    """distinct-1, distinct-2 and mean length of the outputs."""
    return {
        "distinct1": distinct(predictions, 1),
        "distinct2": distinct(predictions, 2),
        "length": mean_length(predictions),
    }


def row_score(prediction: str, reference: str, task: str) -> float:
    """A per-row score for ranking wins and losses: sentence chrF for translation, ROUGE-L F1
    otherwise."""
    if task == "translation":
        import sacrebleu

        return sacrebleu.sentence_chrf(prediction, [reference]).score
    return 100.0 * _scorer().score(reference, prediction)["rougeL"].fmeasure


def corpus_metric(name: str, predictions: list[str], references: list[str]) -> float:
    """One metric by name over the corpus."""
    if name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        return rouge(predictions, references)[name]
    return (
        {"bleu": bleu, "chrf": chrf, "ter": ter}[name](predictions, references)
        if name in ("bleu", "chrf", "ter")
        else diversity(predictions)[name]
    )


def interval(samples: np.ndarray, level: float) -> list[float]:
    """The central `level` interval of bootstrap samples, [low, high]."""
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return [float(np.percentile(samples, lo)), float(np.percentile(samples, hi))]


def paired_bootstrap(
    name: str,
    base: list[str],
    tuned: list[str],
    references: list[str],
    *,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Seeded paired bootstrap over rows of `tuned − base` for a corpus metric.

    Both systems are scored on the same resampled rows each time. Returns the observed
    difference, its interval, and the share of resamples where the difference is ≤ 0 (≥ 0 for
    metrics where lower is better): a one-sided p-value for "tuned is better"."""
    n = len(references)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    if name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):  # per-row means: vectorised
        a = rouge_rows(base, references)[name]
        b = rouge_rows(tuned, references)[name]
        diffs = b[idx].mean(1) - a[idx].mean(1)
        base_s, tuned_s = a[idx].mean(1), b[idx].mean(1)
        base_v, tuned_v = float(a.mean()), float(b.mean())
    else:
        base_s = np.array(
            [
                corpus_metric(name, [base[i] for i in row], [references[i] for i in row])
                for row in idx
            ]
        )
        tuned_s = np.array(
            [
                corpus_metric(name, [tuned[i] for i in row], [references[i] for i in row])
                for row in idx
            ]
        )
        diffs = tuned_s - base_s
        base_v = corpus_metric(name, base, references)
        tuned_v = corpus_metric(name, tuned, references)
    better_high = METRICS[name].higher_is_better
    p = float(np.mean(diffs <= 0) if better_high else np.mean(diffs >= 0))
    return {
        "metric": name,
        "base": base_v,
        "tuned": tuned_v,
        "difference": tuned_v - base_v,
        "ci": interval(diffs, level),
        "base_ci": interval(base_s, level),
        "tuned_ci": interval(tuned_s, level),
        "p_not_better": p,
        "samples": samples,
        "seed": seed,
        "level": level,
    }


def bootstrap_mean_diff(
    base: Sequence[float],
    tuned: Sequence[float],
    *,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Seeded paired bootstrap of mean(tuned) − mean(base) over rows of per-row values (a
    rate is the mean of 0/1 values): both means, the difference and its interval."""
    a, b = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    if a.size == 0:
        return {"base": None, "tuned": None, "difference": None, "ci": None, "rows": 0}
    idx = np.random.default_rng(seed).integers(0, a.size, size=(samples, a.size))
    diffs = b[idx].mean(1) - a[idx].mean(1)
    return {
        "base": float(a.mean()),
        "tuned": float(b.mean()),
        "difference": float(b.mean() - a.mean()),
        "ci": interval(diffs, level),
        "rows": int(a.size),
    }
