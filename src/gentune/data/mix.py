"""Data mixing: several training files, each sampled at its weight's share of every epoch
(`--data gold.jsonl:3 --data pseudo.jsonl:1`).

An epoch holds as many examples as the files together (N). File i's share is w_i / sum(w):
round(N * w_i / sum(w)) of its examples, drawn without replacement by a seeded draw, and, where
the share is larger than the file, in whole shuffled passes over it before a last partial draw.
The draw is fixed by the seed, so a resume sees the same mix; `Mix.lines` says what was drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gentune.data.encode import EncodeReport, Example, Examples
from gentune.data.records import Record
from gentune.errors import ConfigError


def counts(sizes: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Examples drawn from each file per epoch: the weights' shares of all the files' examples,
    rounded so that they add up to the total (largest remainders first)."""
    total, wsum = sum(sizes), sum(weights)
    exact = [total * w / wsum for w in weights]
    out = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: out[i] - exact[i])[: total - sum(out)]:
        out[i] += 1
    return out


def draw(size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` indices into `size` examples: whole shuffled passes, then a partial one."""
    passes, rest = divmod(count, size)
    parts = [rng.permutation(size) for _ in range(passes)]
    parts.append(rng.permutation(size)[:rest])
    return np.sort(np.concatenate(parts))


class MixedExamples(Examples):
    """Examples drawn from several files' examples: (file, index) pairs."""

    def __init__(self, parts: Sequence[Examples], picks: Sequence[np.ndarray]):
        self.parts = list(parts)
        self.part = np.concatenate([np.full(len(p), i) for i, p in enumerate(picks)])
        self.picked = np.concatenate(list(picks)).astype(np.int64)
        self.lengths = self._gather("lengths")
        self.n_targets = self._gather("n_targets")
        self.prompted = self._gather("prompted")

    def _gather(self, name: str) -> np.ndarray:
        out = np.zeros(len(self.picked), dtype=getattr(self.parts[0], name).dtype)
        for i, part in enumerate(self.parts):
            at = self.part == i
            out[at] = getattr(part, name)[self.picked[at]]
        return out

    def __len__(self) -> int:
        return len(self.picked)

    def __getitem__(self, i):  # type: ignore[override]
        return self.take([i])[0]

    def take(self, indices) -> list[Example]:
        indices = [int(i) for i in indices]
        out: list[Example | None] = [None] * len(indices)
        for p, part in enumerate(self.parts):
            mine = [k for k, i in enumerate(indices) if self.part[i] == p]
            if mine:
                got = part.take([self.picked[indices[k]] for k in mine])
                for k, example in zip(mine, got, strict=True):
                    out[k] = example
        return out  # type: ignore[return-value]


class ChainedRecords(Sequence[Record]):
    """Several files' records, one after another (what was read, not what was drawn)."""

    def __init__(self, parts: Sequence[Sequence[Record]]):
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        p = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[p][i - int(self.starts[p])]


def merged_report(reports: Sequence[EncodeReport], *, examples: int) -> EncodeReport:
    """What encoding did to all the files' rows; `examples`: those drawn for an epoch."""
    return EncodeReport(
        rows=sum(r.rows for r in reports),
        examples=examples,
        truncated_rows=sum(r.truncated_rows for r in reports),
        truncated_tokens=sum(r.truncated_tokens for r in reports),
        split_rows=sum(r.split_rows for r in reports),
        too_long=[x for r in reports for x in r.too_long],
        skipped_too_long=sum(r.skipped_too_long for r in reports),
    )


@dataclass(frozen=True)
class Mix:
    """What was drawn from each file per epoch (recorded in the manifest)."""

    files: list[dict]  # path, weight, examples, drawn, share

    def lines(self) -> list[str]:
        return [
            f"mix: {f['path']} (weight {f['weight']:g}): {f['drawn']} examples per epoch from "
            f"its {f['examples']} ({100 * f['share']:.1f} % of the epoch, "
            f"{f['drawn'] / max(f['examples'], 1):.2f}x the file)"
            for f in self.files
        ]


def mix(
    parts: Sequence[Examples], paths: Sequence[str], weights: Sequence[float], seed: int
) -> tuple[MixedExamples, Mix]:
    """The training examples of an epoch drawn from `parts` (one per file) at `weights`."""
    sizes = [len(p) for p in parts]
    empty = [path for path, n in zip(paths, sizes, strict=True) if n == 0]
    if empty:
        raise ConfigError(f"--data {empty[0]}: no training examples in it to mix")
    n = counts(sizes, weights)
    rng = np.random.default_rng(seed)
    picks = [draw(size, k, rng) for size, k in zip(sizes, n, strict=True)]
    total = sum(n)
    files = [
        {"path": p, "weight": w, "examples": s, "drawn": k, "share": k / total}
        for p, w, s, k in zip(paths, weights, sizes, n, strict=True)
    ]
    return MixedExamples(parts, picks), Mix(files)
