"""Faithfulness proxies for summaries, without an NLI or QA model: how much of each output is
new against its source, and what it states that its source does not.

- novel n-grams: the share of the output's word n-grams (n = 1-4) absent from the source;
- extractive fragments (Grusky et al., 2018, Newsroom): the greedy shared word sequences F of
  output S and source A; coverage = Σ|f| / |S| (share of output words inside a copied
  fragment), density = Σ|f|² / |S| (mean copied-fragment length, weighted), compression =
  |A| / |S|;
- unsupported numbers (a number in the output that is nowhere in the source) and unsupported
  capitalised spans (a run of capitalised words one of which is nowhere in the source, case
  ignored): the commonest hallucinations of summarisers, names and figures.

Each is computed for the tuned model's outputs, the base's and the references (their own rate
is the baseline: reference summaries are not fully extractive either), with the tuned − base
difference and its paired-bootstrap interval. These are proxies: a new word can be a faithful
paraphrase and a fully copied sentence can still be taken out of context."""

from __future__ import annotations

import re
from collections.abc import Sequence

from gentune.metrics import bootstrap_mean_diff

NGRAMS = (1, 2, 3, 4)
_TOKEN = re.compile(r"\w+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_CAPITALISED = re.compile(r"\b[A-Z][\w-]*(?:\s+[A-Z][\w-]*)*")


def words(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return _TOKEN.findall(text.lower())


def fragments(summary: list[str], article: list[str]) -> list[list[str]]:
    """Grusky et al.'s greedy extractive fragments of `summary` in `article`."""
    found, i = [], 0
    while i < len(summary):
        best: list[str] = []
        j = 0
        while j < len(article):
            if summary[i] == article[j]:
                i2, j2 = i, j
                while i2 < len(summary) and j2 < len(article) and summary[i2] == article[j2]:
                    i2, j2 = i2 + 1, j2 + 1
                if len(best) < i2 - i:
                    best = summary[i:i2]
                j = j2
            else:
                j += 1
        i += max(len(best), 1)
        if best:
            found.append(best)
    return found


def novel_share(output: list[str], source: list[str], n: int) -> float | None:
    """Share of the output's n-grams not in the source (None: the output has none)."""
    grams = [tuple(output[k : k + n]) for k in range(len(output) - n + 1)]
    if not grams:
        return None
    have = {tuple(source[k : k + n]) for k in range(len(source) - n + 1)}
    return sum(g not in have for g in grams) / len(grams)


def unsupported(output: str, source: str) -> tuple[list[str], list[str]]:
    """(numbers, capitalised spans) of the output that its source does not support."""
    src_words = set(words(source))
    src_numbers = set(_NUMBER.findall(source))
    numbers = [x for x in _NUMBER.findall(output) if x not in src_numbers]
    spans = [
        m.group()
        for m in _CAPITALISED.finditer(output)
        if any(w not in src_words for w in words(m.group()))
    ]
    return numbers, spans


def row_measures(output: str, source: str) -> dict:
    """Every measure for one output against its source."""
    s, a = words(output), words(source)
    frags = fragments(s, a)
    n = max(len(s), 1)
    numbers, spans = unsupported(output, source)
    row = {f"novel_{k}gram": novel_share(s, a, k) for k in NGRAMS}
    row.update(
        coverage=sum(len(f) for f in frags) / n if s else None,
        density=sum(len(f) ** 2 for f in frags) / n if s else None,
        compression=len(a) / len(s) if s else None,
        unsupported_numbers=len(numbers),
        unsupported_spans=len(spans),
        any_unsupported=float(bool(numbers or spans)),
    )
    return row


MEASURES = (
    *(f"novel_{k}gram" for k in NGRAMS),
    "coverage",
    "density",
    "compression",
    "unsupported_numbers",
    "unsupported_spans",
    "any_unsupported",
)


def faithfulness(
    sources: Sequence[str],
    base_out: Sequence[str],
    tuned_out: Sequence[str],
    references: Sequence[str | None],
    *,
    samples: int,
    seed: int,
) -> dict:
    """Per measure: tuned, base, tuned − base [interval] and the references' own value (rows
    where a measure is undefined, e.g. an empty output, are left out of it and counted)."""
    tuned = [row_measures(o, s) for o, s in zip(tuned_out, sources, strict=True)]
    base = [row_measures(o, s) for o, s in zip(base_out, sources, strict=True)]
    refs = [row_measures(r, s) for r, s in zip(references, sources, strict=True) if r]
    table = []
    for m in MEASURES:
        pairs = [(b[m], t[m]) for b, t in zip(base, tuned, strict=True) if None not in (b[m], t[m])]
        entry = bootstrap_mean_diff(
            [b for b, _ in pairs], [t for _, t in pairs], samples=samples, seed=seed
        )
        ref_values = [r[m] for r in refs if r[m] is not None]
        entry["references"] = sum(ref_values) / len(ref_values) if ref_values else None
        entry["measure"] = m
        entry["rows_left_out"] = len(tuned) - len(pairs)
        table.append(entry)
    examples = [
        {"row": k, "output": tuned_out[k], "unsupported": unsupported(tuned_out[k], sources[k])}
        for k in range(len(tuned_out))
        if tuned[k]["any_unsupported"]
    ][:5]
    return {"table": table, "examples": examples}
