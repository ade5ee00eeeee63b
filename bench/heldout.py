"""Real data sets split three ways, the same way every time, for judging gentune's defaults.

    .venv/bin/python bench/heldout.py OUT_DIR      # writes every set's splits as JSONL

- `train`: the rows a recipe is trained on;
- `dev`: the rows gentune's defaults were chosen on (bench/defaults.py);
- `test`: rows no choice ever looked at; bench/vs_trl.py reports on them.

Sets (each needs its package; a missing one is named with how to install it):

| set | task | source | train / dev / test |
|---|---|---|---|
| aclsum-title | summarization | `pip install --no-deps aclsum`: abstract -> title | 100 / 50 / 100 (ACLSum's splits) |
| aclsum-summary | summarization | the same papers: abstract -> the three expert summaries | 100 / 50 / 100 |
| de-en | translation | `apt install trans-de-en` (Ding): its German -> English sentence pairs | 500 / 100 / 200 |
| chitchat | dialogue | `pip install --no-deps chitchat-dataset`: human chats, first 6 turns | 300 / 50 / 100 |
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

DING = Path("/usr/share/trans/de-en")
SEED = 20261129


@dataclass(frozen=True)
class HeldOut:
    name: str
    task: str
    flags: list[str] = field(default_factory=list)  # the task's own gentune flags
    metric: str = "rougeL"  # the headline metric


SETS = {
    "aclsum-title": HeldOut(
        "aclsum-title",
        "summarization",
        ["--instruction", "Write the title of the research paper with this abstract."],
    ),
    "aclsum-summary": HeldOut("aclsum-summary", "summarization"),
    "de-en": HeldOut(
        "de-en",
        "translation",
        ["--source-lang", "German", "--target-lang", "English"],
        metric="bleu",
    ),
    "chitchat": HeldOut("chitchat", "dialogue"),
}


def _aclsum(target: str) -> dict[str, list[dict]]:
    from gentune.demo import aclsum_rows

    return {
        "train": aclsum_rows("train", target),
        "dev": aclsum_rows("val", target),
        "test": aclsum_rows("test", target),
    }


def _split(rows: list, sizes: tuple[int, int, int]) -> dict[str, list]:
    rows = list(rows)
    random.Random(SEED).shuffle(rows)
    a, b, c = sizes
    if len(rows) < a + b + c:
        raise SystemExit(f"only {len(rows)} rows, {a + b + c} needed")
    return {"train": rows[:a], "dev": rows[a : a + b], "test": rows[a + b : a + b + c]}


def _de_en() -> dict[str, list[dict]]:
    """Ding's whole-sentence entries ("Satz. :: Sentence."), first English variant, deduplicated
    by the German side."""
    if not DING.exists():
        raise SystemExit(f"{DING} is missing: apt install trans-de-en")
    seen, rows = set(), []
    for line in DING.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or line.count(" :: ") != 1:
            continue
        de, en = line.split(" :: ")
        en = en.split("; ")[0].strip()
        if re.search(r"[|{}\[\];]", de + en) or not (de.endswith((".", "?", "!"))):
            continue
        if not en.endswith((".", "?", "!")) or len(de) < 25 or de in seen:
            continue
        seen.add(de)
        rows.append({"input": de, "output": en})
    return _split(rows, (500, 100, 200))


def _chitchat() -> dict[str, list[dict]]:
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps chitchat-dataset")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset.json"
    chats = []
    for conv in json.loads(path.read_text()).values():
        turns = [" ".join(u["text"] for u in m).strip() for m in conv["messages"]][:6]
        if len(turns) < 4 or not all(turns):
            continue
        turns = turns[: len(turns) // 2 * 2]  # end on the second speaker (the assistant)
        roles = ["user", "assistant"] * (len(turns) // 2)
        chats.append(
            {"messages": [{"role": r, "content": t} for r, t in zip(roles, turns, strict=True)]}
        )
    return _split(chats, (300, 50, 100))


def rows(name: str) -> dict[str, list[dict]]:
    """{train, dev, test} rows of one set."""
    if name == "aclsum-title":
        return _aclsum("title")
    if name == "aclsum-summary":
        return _aclsum("summary")
    if name == "de-en":
        return _de_en()
    if name == "chitchat":
        return _chitchat()
    raise SystemExit(f"unknown set {name!r}: choose from {', '.join(SETS)}")


def write(name: str, out: Path) -> dict[str, Path]:
    """The set's splits as OUT/NAME-{train,dev,test}.jsonl."""
    from gentune.demo import write_jsonl

    return {
        split: write_jsonl(out / f"{name}-{split}.jsonl", part)
        for split, part in rows(name).items()
    }


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/heldout")
    for name in SETS:
        paths = write(name, out)
        counts = {k: sum(1 for _ in p.open()) for k, p in paths.items()}
        print(name, counts)
