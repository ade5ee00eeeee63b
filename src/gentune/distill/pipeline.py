"""`gentune distill`: a teacher labels unlabelled inputs with text, the labels are filtered,
and a student is trained on the gold rows mixed with the pseudo-labelled ones; then base,
student(s) and teacher are scored side by side on the gold test rows.

OUT/labels.jsonl  the label cache: one line per input labelled (or failed), with provenance
                  (teacher, decoding, score, stopped by EOS, candidates, seconds). A rerun
                  labels only what is missing: a row is never labelled twice, a line cut by a
                  kill is dropped, a failed row is tried again.
OUT/pseudo.jsonl  the labels that passed the filters (input, output)
OUT/labelling.jsonl  each labelling invocation's rows and wall time (the report sums them)
OUT/filters.json  what each filter dropped
OUT/student/      the student's run (gold + pseudo); OUT/student-gold/ with --baseline
OUT/report.md     the side-by-side scores with bootstrap intervals, and the costs
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from gentune.config import Decoding, DistillSettings, TrainConfig
from gentune.data.checks import COPY, jaccard, normalize, shingles
from gentune.data.records import Record, read_records
from gentune.data.tasks import get_task
from gentune.distill.teacher import (
    HttpTeacher,
    Label,
    LocalTeacher,
    agreement_choice,
    label_decoding,
    make_teacher,
    word_count,
)
from gentune.errors import TeacherError, UsageError
from gentune.lock import locked


def input_key(text: str) -> str:
    """A short hash of an input: with its row, what the cache matches."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- the label cache ---------------------------------------------------------------------------
def read_cache(path: Path) -> dict[tuple[int, str], dict]:
    """The cache's labelled rows by (row, input key); the last line of a row wins. A last line
    without its newline (the process was killed while writing it) is cut off the file."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        keep = raw.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(keep)
        raw = raw[:keep]
    done: dict[tuple[int, str], dict] = {}
    for n, line in enumerate(raw.decode().splitlines(), 1):
        try:
            item = json.loads(line)
            done[(int(item["row"]), str(item["key"]))] = item
        except (ValueError, KeyError, TypeError):
            raise UsageError(
                f"{path}:{n}: not a label line; delete the file to label anew"
            ) from None
    return done


class CacheWriter:
    """Appends label lines, each flushed to disk before the next."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = path.open("a", encoding="utf-8")

    def write(self, label: Label) -> None:
        self.f.write(label.line() + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def _choose(candidates: list[str], scores: list) -> tuple[int, str]:
    if len(candidates) == 1:
        return 0, "only"
    if all(s is not None for s in scores):
        return max(range(len(candidates)), key=lambda i: scores[i]), "score"
    return agreement_choice(candidates), "agreement"


def label_inputs(
    teacher,
    records: list[Record],
    decoding: Decoding,
    cache: Path,
    *,
    log: Callable[[str], None] = print,
) -> dict:
    """Label the records not yet in `cache`; returns counts. A URL teacher that stops
    answering raises TeacherError after what was labelled is on disk."""
    done = read_cache(cache)
    previous = next((d for d in done.values() if d.get("output") is not None), None)
    settings = json.loads(json.dumps({"teacher": teacher.name, "decoding": asdict(decoding)}))
    if previous and {k: previous[k] for k in settings} != settings:
        raise UsageError(
            f"{cache} was labelled by {previous['teacher']} with other settings "
            f"({previous['decoding']}); give another --out, or delete the file to label anew"
        )
    pending = [
        r for r in records if done.get((r.row, input_key(r.input or "")), {}).get("output") is None
    ]
    log(
        f"gentune distill: {len(records) - len(pending)} of {len(records)} inputs already "
        f"labelled in {cache}; labelling {len(pending)} with {teacher.name}"
    )
    writer = CacheWriter(cache)
    counts = {"labelled": 0, "failed": 0, "seconds": 0.0}
    started = time.time()

    def record(rec: Record, cands, scores, stopped, seconds, error=None) -> None:
        label = Label(
            row=rec.row,
            key=input_key(rec.input or ""),
            input=rec.input or "",
            output=None,
            teacher=teacher.name,
            decoding=asdict(decoding),
            seconds=round(seconds, 3),
            error=error,
        )
        if error is None:
            i, how = _choose(cands, scores)
            label = replace(
                label,
                output=cands[i],
                score=scores[i],
                stopped_by_eos=bool(stopped[i]),
                chosen_by=how,
                candidates=cands if len(cands) > 1 else [],
                scores=scores if len(cands) > 1 and how == "score" else [],
            )
            counts["labelled"] += 1
        else:
            counts["failed"] += 1
            log(f"gentune distill: {rec.where}: the teacher failed on this row: {error}")
        writer.write(label)

    try:
        if isinstance(teacher, LocalTeacher):
            for at in range(0, len(pending), 16):
                chunk = pending[at : at + 16]
                t = time.time()
                for rec, (cands, scores, stopped) in zip(
                    chunk, teacher.label(chunk, decoding), strict=True
                ):
                    record(rec, cands, scores, stopped, (time.time() - t) / len(chunk))
                log(f"gentune distill: labelled {min(at + 16, len(pending))} of {len(pending)}")
        else:
            _label_concurrently(teacher, pending, decoding, record, log)
    finally:
        writer.close()
        counts["seconds"] = round(time.time() - started, 1)
        if pending:  # each invocation's wall time, so that a resumed labelling is costed whole
            with cache.with_name("labelling.jsonl").open("a") as f:
                f.write(json.dumps({"teacher": teacher.name, **counts}) + "\n")
    return counts


def _label_concurrently(teacher: HttpTeacher, pending, decoding, record, log) -> None:
    """Requests in flight at most `teacher.concurrency`; the main thread writes the cache."""
    queue = list(pending)
    with ThreadPoolExecutor(max_workers=teacher.concurrency) as pool:
        running: dict = {}
        finished = 0
        try:
            while queue or running:
                while queue and len(running) < teacher.concurrency:
                    rec = queue.pop(0)
                    running[pool.submit(_timed, teacher.request, rec.input or "", decoding)] = rec
                ready, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in ready:
                    rec = running.pop(fut)
                    try:
                        (cands, stopped), seconds = fut.result()
                    except ValueError as e:  # this row refused (e.g. HTTP 400)
                        record(rec, [], [], [], 0.0, error=str(e))
                        continue
                    record(rec, cands, [None] * len(cands), stopped, seconds)
                    finished += 1
                    if finished % 50 == 0:
                        log(f"gentune distill: labelled {finished} of {len(pending)}")
        except TeacherError as e:
            for fut in running:
                fut.cancel()
            raise TeacherError(
                f"{e}; the rows labelled so far are kept, run distill again to go on"
            ) from None


def _timed(fn, *args):
    t = time.time()
    return fn(*args), time.time() - t


# ---- filters -----------------------------------------------------------------------------------
def filter_labels(labels: list[dict], gold_targets: list[str] | None) -> tuple[list[dict], dict]:
    """(kept {input, output} rows, {filter: rows dropped}), each label tested in this order:
    no label (the teacher failed), empty, not stopped by EOS, too short / too long against the
    gold targets' word counts (below half their 1st percentile, above 1.5x their 99th), a copy
    of the input, a duplicate of an earlier input."""
    bounds = None
    if gold_targets:
        words = np.array([word_count(t) for t in gold_targets])
        bounds = (0.5 * np.percentile(words, 1), 1.5 * np.percentile(words, 99))
    dropped = {
        "teacher failed": 0,
        "empty": 0,
        "not stopped by EOS": 0,
        "too short": 0,
        "too long": 0,
        "copies the input": 0,
        "duplicate input": 0,
    }
    kept, seen = [], set()
    for label in labels:
        out = label.get("output")
        why = None
        if out is None:
            why = "teacher failed"
        elif not out.strip():
            why = "empty"
        elif not label.get("stopped_by_eos"):
            why = "not stopped by EOS"
        elif bounds and word_count(out) < bounds[0]:
            why = "too short"
        elif bounds and word_count(out) > bounds[1]:
            why = "too long"
        elif normalize(out) == normalize(label["input"]) or (
            jaccard(shingles(out), shingles(label["input"])) >= COPY
        ):
            why = "copies the input"
        elif normalize(label["input"]) in seen:
            why = "duplicate input"
        if why:
            dropped[why] += 1
            continue
        seen.add(normalize(label["input"]))
        kept.append({"input": label["input"], "output": out})
    if bounds:
        dropped["length bounds (words)"] = [round(float(b), 1) for b in bounds]  # type: ignore[assignment]
    return kept, dropped


# ---- the whole step ----------------------------------------------------------------------------
def test_leaks(test: list[Record], inputs: list[Record], gold: list[Record]) -> list[str]:
    """Test rows whose input is (nearly) an input the teacher labels or a gold row: the
    student would be scored on what it was trained on."""
    from gentune.data.checks import leakage

    out = []
    for name, rows in (("--inputs", inputs), ("--gold", gold)):
        for found in leakage(rows, test, "test") if rows else ():
            if found.count:
                out.append(
                    f"{found.what.replace('a training input', f'in {name}')}: {found.count}, "
                    f"e.g. {found.examples[0]}; the scores would be optimistic"
                )
    return out


def _records(path: str, flag: str, *, require_output: bool = False) -> list[Record]:
    if not Path(path).exists():
        raise UsageError(f"--{flag} {path}: no such file")
    return read_records(path, kind="pairs", require_output=require_output)


def distill(s: DistillSettings, *, log: Callable[[str], None] = print) -> dict:
    """Label, filter, train the student (and the gold-only baseline), score them: the report's
    numbers."""
    if get_task(s.task).kind != "pairs":
        raise UsageError(f"--task {s.task}: distill labels inputs with outputs (pairs tasks)")
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    with locked(out):  # one writer: the label cache and the students' runs are ours
        return _distill(s, out, log)


def _distill(s: DistillSettings, out: Path, log: Callable[[str], None]) -> dict:
    """`distill`'s work, under the lock of OUT."""
    inputs = _records(s.inputs, "inputs")
    missing = [r.where for r in inputs if not (r.input or "").strip()]
    if missing:
        raise UsageError(f"{missing[0]}: no input to label ({len(missing)} such rows)")
    if s.limit:
        inputs = inputs[: s.limit]
    gold = _records(s.gold, "gold", require_output=True) if s.gold else None
    gold_targets = [r.output or "" for r in gold] if gold else None
    if s.test:
        for line in test_leaks(_records(s.test, "test", require_output=True), inputs, gold or []):
            log(f"gentune distill: warning: {line}")
    teacher = make_teacher(s)
    decoding = label_decoding(s, teacher, gold_targets)
    counts = label_inputs(teacher, inputs, decoding, out / "labels.jsonl", log=log)
    labels = list(read_cache(out / "labels.jsonl").values())
    wanted = {(r.row, input_key(r.input or "")) for r in inputs}
    # in the inputs' order (a URL teacher's lines come as the answers do): the same pseudo.jsonl
    # however the requests interleaved
    labels = sorted((x for x in labels if (x["row"], x["key"]) in wanted), key=lambda x: x["row"])
    kept, dropped = filter_labels(labels, gold_targets)
    (out / "filters.json").write_text(json.dumps(dropped, indent=1) + "\n")
    with (out / "pseudo.jsonl").open("w", encoding="utf-8") as f:
        for row in kept:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    log(
        f"gentune distill: {len(kept)} of {len(labels)} labels kept in {out / 'pseudo.jsonl'}; "
        "dropped: " + ", ".join(f"{k} {v}" for k, v in dropped.items())
    )
    result: dict = {"labelling": counts, "kept": len(kept), "dropped": dropped}
    if s.label_only:
        return result
    if not kept:
        raise UsageError("no pseudo-labels passed the filters: nothing to train the student on")
    del teacher  # its memory, before the student's
    runs = {"student": _train(s, out / "student", log, with_pseudo=True)}
    if s.baseline and gold:
        runs["student (gold only)"] = _train(s, out / "student-gold", log, with_pseudo=False)
    result["training_seconds"] = {k: v[1] for k, v in runs.items()}
    if s.test:
        from gentune.distill.report import side_by_side

        result["report"] = side_by_side(s, {k: v[0] for k, v in runs.items()}, result, log=log)
    (out / "distill.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def _train(s: DistillSettings, where: Path, log, *, with_pseudo: bool) -> tuple[str, float]:
    from gentune.training.train import train

    pseudo = str(Path(s.out) / "pseudo.jsonl")
    if s.gold and with_pseudo:
        # (1:1 beat shares by rows in the demo: BLEU +1.04 against +0.76 over gold alone)
        data: str | tuple[str, ...] = (
            f"{s.gold}:{s.gold_weight:g}",
            f"{pseudo}:{s.pseudo_weight:g}",
        )
    else:
        data = s.gold if s.gold and not with_pseudo else pseudo
    cfg = TrainConfig(
        task=s.task,
        data=data,
        out=str(where),
        model=s.student,
        instruction=s.instruction,
        source_lang=s.source_lang,
        target_lang=s.target_lang,
        epochs=s.epochs,
        max_steps=s.max_steps,
        eval_generate=0,
        progress=s.progress,
        overwrite=True,
    )
    log(f"gentune distill: training the student {s.student} on {data}")
    started = time.time()
    run = train(cfg, log=log)
    return str(run), round(time.time() - started, 1)
