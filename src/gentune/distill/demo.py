"""`gentune demo --distill`: distillation end to end on real data, over HTTP.

German -> English sentence pairs from Ding (Debian's `trans-de-en`): a few hundred labelled
(gold) rows, two thousand German sentences whose English is hidden (the unlabelled inputs), and
held-out test rows. The teacher, Gemma-3-270M (the second embedded model), is fine-tuned on the
gold rows and served by `gentune serve` on 127.0.0.1; `gentune distill` labels the inputs
through it, and the student, SmolLM2-135M (the embedded default), is trained on gold +
pseudo-labelled rows and, for comparison, on the gold rows alone. All four models are scored
on the test rows (OUT/distill/report.md).
"""

from __future__ import annotations

import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gentune import DEFAULT_MODEL
from gentune.config import TrainConfig
from gentune.errors import UsageError
from gentune.rundir import write_jsonl

DING = Path("/usr/share/trans/de-en")
TEACHER = "gemma3-270m"
SOURCE, TARGET = "German", "English"


def _clean(text: str) -> str:
    """An entry without Ding's annotations ({n}, [übtr.], ...)."""
    return re.sub(r"\s+", " ", re.sub(r"\s*(\[[^\]]*\]|\{[^}]*\})", "", text)).strip()


def ding_rows() -> list[dict]:
    """Ding's sentence pairs: the German and English sides of an entry split at " | " into
    aligned parts, annotations removed, the first English variant; whole sentences of at least
    25 characters, one row per German sentence, in a seeded random order (about 14,000)."""
    if not DING.exists():
        raise UsageError(
            f"{DING} is missing: install Debian's trans-de-en (apt install trans-de-en)"
        )
    seen, rows = set(), []
    for line in DING.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or line.count(" :: ") != 1:
            continue
        de_side, en_side = line.split(" :: ")
        de_parts, en_parts = de_side.split(" | "), en_side.split(" | ")
        if len(de_parts) != len(en_parts):
            continue
        for de, en in zip(de_parts, en_parts, strict=True):
            de, en = _clean(de), _clean(en.split("; ")[0])
            if ";" in de or not de.endswith((".", "?", "!")) or not en.endswith((".", "?", "!")):
                continue
            if len(de) < 25 or de in seen or re.search(r"[(/]", de + en):
                continue
            seen.add(de)
            rows.append({"input": de, "output": en})
    random.Random(20261130).shuffle(rows)
    return rows


def write_data(out: Path, gold: int, inputs: int, test: int) -> dict[str, Path]:
    """OUT/gold.jsonl, inputs.jsonl (German only) and test.jsonl: disjoint rows."""
    rows = ding_rows()
    if len(rows) < gold + inputs + test:
        raise UsageError(f"Ding has {len(rows)} sentence pairs; {gold + inputs + test} needed")
    unlabelled = [{"input": r["input"]} for r in rows[gold : gold + inputs]]
    return {
        "gold": write_jsonl(out / "gold.jsonl", rows[:gold]),
        "inputs": write_jsonl(out / "inputs.jsonl", unlabelled),
        "test": write_jsonl(out / "test.jsonl", rows[gold + inputs : gold + inputs + test]),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise UsageError(f"gentune serve stopped (exit {proc.returncode}) before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise UsageError(f"gentune serve did not answer on {url} within {timeout:.0f} s")


def demo_distill(
    out: str | Path = "runs/distill-demo",
    *,
    gold: int,
    inputs: int,
    test: int,
    max_steps: int | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Train the teacher, serve it, distill into the student, report. The row counts' defaults
    are the CLI's (--gold-rows, --input-rows, --test-rows), stated there only."""
    from gentune.distill.pipeline import DistillSettings, distill
    from gentune.training.train import train

    out = Path(out)
    files = write_data(out / "data", gold, inputs, test)
    log(
        f"gentune demo --distill: Ding de->en, {gold} gold rows, {inputs} unlabelled inputs, "
        f"{test} test rows; teacher {TEACHER}, student {DEFAULT_MODEL}"
    )
    started = time.time()
    teacher_run = train(
        TrainConfig(
            task="translation",
            data=str(files["gold"]),
            out=str(out / "teacher"),
            model=TEACHER,
            max_steps=max_steps,
            eval_generate=0,
            progress=progress,
            overwrite=True,
            source_lang=SOURCE,
            target_lang=TARGET,
        ),
        log=log,
    )
    teacher_seconds = time.time() - started
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "gentune", "serve", str(teacher_run), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(url, server)
        log(f"gentune demo --distill: the teacher is served on {url}")
        result = distill(
            DistillSettings(
                task="translation",
                teacher=url,
                inputs=str(files["inputs"]),
                gold=str(files["gold"]),
                test=str(files["test"]),
                out=str(out / "distill"),
                student=DEFAULT_MODEL,
                baseline=True,
                max_steps=max_steps,
                concurrency=8,
                progress=progress,
                source_lang=SOURCE,
                target_lang=TARGET,
            ),
            log=log,
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    result["teacher_training_seconds"] = round(teacher_seconds, 1)
    log(
        f"gentune demo --distill: teacher training took {teacher_seconds:.0f} s; {out}/distill/report.md"
    )
    return result
