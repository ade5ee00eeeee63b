"""Input perturbations for the robustness check, seeded and applied to inputs only (references
are never touched: it is not fair to score a model against broken text).

The four follow HELM's robustness perturbations (Liang et al., 2022), written here:
- `typos`: each word of three letters or more is misspelt with probability 0.1 by one edit of
  the kind people make: two adjacent letters swapped, a letter dropped, a letter doubled, or a
  letter replaced by a neighbour on a QWERTY keyboard (HELM's misspelling perturbation draws
  from a list of common misspellings instead; a list is language-bound, an edit is not).
- `case`: the whole input lower-cased (HELM's lowercase).
- `spaces`: every run of spaces becomes 1-3 spaces (HELM's extra space, max_spaces=3).
- `mild-mix`: HELM's canonical mix: lower-cased, contractions made (do not → don't, …), then
  typos as above, then extra spaces.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

PERTURBATIONS = ("typos", "case", "spaces", "mild-mix")
TYPO_P = 0.1  # probability that a word of 3+ letters gets one edit
MAX_SPACES = 3

_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
NEIGHBOURS = {
    ch: "".join(
        _ROWS[r2][c2]
        for r2 in (r - 1, r, r + 1)
        for c2 in (c - 1, c, c + 1)
        if 0 <= r2 < 3 and 0 <= c2 < len(_ROWS[r2]) and (r2, c2) != (r, c)
    )
    for r, row in enumerate(_ROWS)
    for c, ch in enumerate(row)
}
CONTRACTIONS = {
    "do not": "don't",
    "does not": "doesn't",
    "did not": "didn't",
    "is not": "isn't",
    "are not": "aren't",
    "was not": "wasn't",
    "were not": "weren't",
    "cannot": "can't",
    "can not": "can't",
    "will not": "won't",
    "would not": "wouldn't",
    "should not": "shouldn't",
    "could not": "couldn't",
    "has not": "hasn't",
    "have not": "haven't",
    "it is": "it's",
    "that is": "that's",
    "we are": "we're",
    "they are": "they're",
    "i am": "i'm",
    "you are": "you're",
}
_WORD = re.compile(r"[^\W\d_]{3,}")


def misspell(word: str, rng: random.Random) -> str:
    """One human-like edit of `word` (3+ letters): swap, drop, double or keyboard neighbour."""
    i = rng.randrange(len(word))
    kind = rng.randrange(4)
    if kind == 0 and i < len(word) - 1:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    near = NEIGHBOURS.get(word[i].lower())
    if not near:  # not a QWERTY letter: drop it instead
        return word[:i] + word[i + 1 :]
    ch = rng.choice(near)
    return word[:i] + (ch.upper() if word[i].isupper() else ch) + word[i + 1 :]


def typos(text: str, rng: random.Random, p: float | None = None) -> str:
    """Each word of 3+ letters misspelt with probability p (default TYPO_P)."""
    p = TYPO_P if p is None else p
    return _WORD.sub(lambda m: misspell(m.group(), rng) if rng.random() < p else m.group(), text)


def spaces(text: str, rng: random.Random) -> str:
    """Every run of spaces made 1-3 spaces."""
    return re.sub(r" +", lambda m: " " * rng.randint(1, MAX_SPACES), text)


def contract(text: str) -> str:
    """Contractions made (do not -> don't), the first letter's case kept."""
    for long, short in CONTRACTIONS.items():
        text = re.sub(rf"\b{long}\b", _keep_case(short), text, flags=re.IGNORECASE)
    return text


def _keep_case(short: str) -> Callable[[re.Match], str]:
    return lambda m: m.group()[0] + short[1:]


def mild_mix(text: str, rng: random.Random) -> str:
    """Lower case, contractions, typos, extra spaces."""
    return spaces(typos(contract(text.lower()), rng), rng)


FUNCTIONS: dict[str, Callable[[str, random.Random], str]] = {
    "typos": typos,
    "case": lambda text, rng: text.lower(),
    "spaces": spaces,
    "mild-mix": mild_mix,
}


def perturb(name: str, texts: list[str], seed: int) -> list[str]:
    """`texts` under perturbation `name`; the same seed gives the same edits, row by row (each
    row's generator is seeded from the seed, the name and the row's index)."""
    fn = FUNCTIONS[name]
    return [fn(t, random.Random(f"{seed}:{name}:{i}")) for i, t in enumerate(texts)]
