"""Data checks that `gentune plan` runs before training: test leakage (training rows whose
input is also, exactly or nearly, in the validation or test rows: scores on those rows are
inflated), duplicate rows within the training data, targets that copy their input, and likely
secrets or personal data in the training text. Each is counted, with the first rows named.

Near-duplicates: the Jaccard similarity of two inputs' word 3-gram sets is at least `NEAR`.
Candidate pairs come from an inverted index of the 3-grams; 3-grams shared by more than
`COMMON` rows (boilerplate, a template's words) are left out of the index, so the check stays
near-linear in the rows.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gentune.data.records import Record

NEAR = 0.8  # Jaccard similarity of word 3-gram sets from which two inputs are near-duplicates
COPY = 0.9  # ... from which a target counts as a copy of its input
COMMON = 50  # 3-grams in more rows than this do not propose candidates
SHOWN = 3  # rows named per finding

# likely secrets and personal data: (what, pattern)
SENSITIVE = [
    ("e-mail address", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")),
    (
        "API key or token",
        re.compile(
            r"\b(?:sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}"
            r"|xox[abposr]-[A-Za-z0-9-]{10,}|hf_[A-Za-z0-9]{30,}|AIza[0-9A-Za-z_-]{35})\b"
        ),
    ),
    ("private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    (
        "password or secret assignment",
        re.compile(r"(?i)\b(?:password|passwd|secret|api[_-]?key)\s*[:=]\s*['\"]?[^\s'\"]{8,}"),
    ),
    (
        "phone number",
        re.compile(
            r"\+\d{1,3}[ .-]?\(?\d{1,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,5}\b"  # +49 30 1234567
            r"|\(\d{3}\) ?\d{3}[-.]\d{4}\b"  # (555) 123-4567
            r"|\b\d{3}[-.]\d{3}[-.]\d{4}\b"  # 555-123-4567
        ),
    ),
]


def normalize(text: str) -> str:
    """Case, accents' forms, punctuation and spacing removed: what 'the same text' compares."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.findall(r"\w+", text))


def source_text(record: Record) -> str:
    """What the model is given: the input, a chat's turns but the last answer, or the text."""
    if record.messages:
        turns = list(record.messages)
        if turns and turns[-1]["role"] == "assistant":
            turns = turns[:-1]
        return "\n".join(m["content"] for m in turns)
    return record.input if record.input is not None else (record.text or "")


def target_text(record: Record) -> str | None:
    """What the model is trained to answer: the output, a chat's last answer (None: none)."""
    if record.messages:
        last = record.messages[-1]
        return last["content"] if last["role"] == "assistant" else None
    return record.output


def whole_text(record: Record) -> str:
    """The row's source and target together."""
    return "\n".join(x for x in (source_text(record), target_text(record) or "") if x)


def shingles(text: str) -> frozenset[str]:
    """Word 3-grams of the normalized text (its words, for texts shorter than three)."""
    words = normalize(text).split()
    if len(words) < 3:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i : i + 3]) for i in range(len(words) - 2))


def jaccard(a: frozenset, b: frozenset) -> float:
    """|a & b| / |a | b| (1 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class Finding:
    """One check's result: how many rows, and the first of them (file:row, with a detail)."""

    what: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < SHOWN:
            self.examples.append(example)

    def line(self) -> str:
        shown = f": {'; '.join(self.examples)}" if self.count else ""
        more = " ..." if self.count > len(self.examples) else ""
        return f"{self.what}: {self.count}{shown}{more}"


def near_pairs(
    train: Sequence[frozenset], other: Sequence[frozenset], threshold: float
) -> dict[int, tuple[int, float]]:
    """For each row of `other` with a near-duplicate in `train`: (that train row, similarity),
    the most similar one."""
    index: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(train):
        for g in s:
            index[g].append(i)
    found: dict[int, tuple[int, float]] = {}
    for j, s in enumerate(other):
        shared: dict[int, int] = defaultdict(int)
        for g in s:
            rows = index.get(g, ())
            if len(rows) <= COMMON:
                for i in rows:
                    shared[i] += 1
        # Jaccard >= t needs at least t * |s| shared 3-grams
        need = max(1, int(threshold * len(s)) - 1)
        best = None
        for i, n in shared.items():
            if n >= need:
                sim = jaccard(train[i], s)
                if sim >= threshold and (best is None or sim > best[1]):
                    best = (i, sim)
        if best:
            found[j] = best
    return found


def nearest_similarity(train: Sequence[Record], held: Sequence[Record]) -> list[float]:
    """Each held row's highest input similarity (Jaccard of word 3-grams) to any training
    row's input, from the same index as the near-duplicate check: 0 where they share no 3-gram
    used by at most `COMMON` training rows."""
    found = near_pairs(
        [shingles(source_text(r)) for r in train], [shingles(source_text(r)) for r in held], 1e-9
    )
    return [found[j][1] if j in found else 0.0 for j in range(len(held))]


def leakage(train: Sequence[Record], held: Sequence[Record], name: str) -> tuple[Finding, Finding]:
    """(exact, near) duplicates of `held` rows' inputs among the training rows' inputs."""
    exact = Finding(f"{name} rows whose input is also a training input (exact)")
    near = Finding(f"{name} rows whose input nearly equals a training input (Jaccard >= {NEAR})")
    seen: dict[str, Record] = {}
    for r in train:
        seen.setdefault(normalize(source_text(r)), r)
    rest = []
    for r in held:
        twin = seen.get(normalize(source_text(r)))
        if twin is not None:
            exact.add(f"{r.where} = {twin.where}")
        else:
            rest.append(r)
    train_sh = [shingles(source_text(r)) for r in train]
    for j, (i, sim) in sorted(
        near_pairs(train_sh, [shingles(source_text(r)) for r in rest], NEAR).items()
    ):
        near.add(f"{rest[j].where} ~ {train[i].where} ({sim:.2f})")
    return exact, near


def duplicates(train: Sequence[Record]) -> Finding:
    """Training rows equal (normalized input and target) to an earlier training row."""
    out = Finding("duplicate training rows (same input and target)")
    seen: dict[str, str] = {}
    for r in train:
        key = normalize(source_text(r)) + "\x00" + normalize(target_text(r) or "")
        if key in seen:
            out.add(f"{r.where} = {seen[key]}")
        else:
            seen[key] = r.where
    return out


def copies(train: Sequence[Record]) -> Finding:
    """Rows whose target is their input again (normalized equal, or 3-gram Jaccard >= COPY)."""
    out = Finding(f"training rows whose target copies the input (Jaccard >= {COPY})")
    for r in train:
        target = target_text(r)
        if not target:
            continue
        src = source_text(r)
        if normalize(src) == normalize(target) or jaccard(shingles(src), shingles(target)) >= COPY:
            out.add(r.where)
    return out


def sensitive(train: Iterable[Record]) -> list[Finding]:
    """Rows with text that looks like a secret or personal data, by kind."""
    found = {what: Finding(f"training rows with a likely {what}") for what, _ in SENSITIVE}
    for r in train:
        text = whole_text(r)
        for what, pattern in SENSITIVE:
            m = pattern.search(text)
            if m:
                found[what].add(f"{r.where} ({_redact(m.group(0))})")
    return list(found.values())


def _redact(text: str) -> str:
    """Enough of a match to find it, not the secret itself."""
    return text if len(text) <= 6 else text[:4] + "…"


@dataclass
class Report:
    leaks: list[Finding]  # exact and near, per held-out file
    others: list[Finding]

    @property
    def leaked(self) -> int:
        return sum(f.count for f in self.leaks)

    def lines(self) -> list[str]:
        return [f.line() for f in [*self.leaks, *self.others]]


def check(train: Sequence[Record], held: Sequence[tuple[str, Sequence[Record]]]) -> Report:
    """Every check: `held` are (name, rows) of the validation and test data."""
    leaks = [f for name, rows in held for f in leakage(train, rows, name)]
    return Report(leaks, [duplicates(train), copies(train), *sensitive(train)])
