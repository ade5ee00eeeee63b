"""gentune distill: the label cache (resume after a kill, never twice), URL teachers (failures,
unreachable), the filters' counts, and the whole step on tiny models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gentune.cli import main
from gentune.data.records import Record
from gentune.distill.pipeline import filter_labels, read_cache

from .conftest import PAIRS, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


class FakeTeacher:
    """An OpenAI-compatible /v1/completions that labels "x" with "label of x"; `delay` per
    request, `refuse` inputs answered with HTTP 400, `broken` answers every request with 500."""

    def __init__(self, delay=0.0, refuse=(), broken=False, code=500):
        self.delay, self.refuse, self.broken, self.code = delay, set(refuse), broken, code
        self.seen: Counter = Counter()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["prompt"]
                teacher.seen[prompt] += 1
                time.sleep(teacher.delay * (1 + int(prompt.split()[-1]) % 3))  # out of order
                if teacher.broken or prompt in teacher.refuse:
                    code = teacher.code if teacher.broken else 400
                    self.send_response(code)
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "no"}}')
                    return
                n = body.get("n", 1)
                answer = {
                    "choices": [
                        {"index": i, "text": f" label of {prompt}", "finish_reason": "stop"}
                        for i in range(n)
                    ]
                }
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()  # the port refuses connections from now on


@pytest.fixture
def inputs(tmp_path):
    return write_jsonl(tmp_path / "inputs.jsonl", [{"input": f"text {i}"} for i in range(60)])


def _label_args(url, inputs, out, *extra):
    return [
        "distill", "--task", "summarization", "--teacher", url, "--inputs", str(inputs),
        "--out", str(out), "--label-only", "--max-new-tokens", "16", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_the_cache_resumes_after_a_kill_and_never_labels_a_row_twice(inputs, tmp_path):
    teacher = FakeTeacher(delay=0.05)
    out = tmp_path / "d"
    cache = out / "labels.jsonl"
    try:
        cmd = [sys.executable, "-m", "gentune", *_label_args(teacher.url, inputs, out)]
        cmd += ["--concurrency", "2"]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and (not cache.exists() or cache.read_text().count("\n") < 12):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with cache.open("a") as f:
            f.write('{"row": 99, "key": "cut in the mid')  # a line cut by the kill
        before = {(x["row"], x["key"]) for x in read_cache(cache).values()}
        assert 12 <= len(before) < 60
        assert cache.read_text().endswith("\n")  # the cut line is gone
        first = Counter(teacher.seen)
        assert main(_label_args(teacher.url, inputs, out)) == 0
        again = teacher.seen - first
        # what was in the cache is not asked again; only rows in flight at the kill may be
        labelled_before = {f"text {row - 1}" for row, _ in before}
        assert not labelled_before & set(again)
        assert sum(again.values()) == 60 - len(before)
        lines = [json.loads(x) for x in cache.read_text().splitlines()]
        assert Counter(x["row"] for x in lines).most_common(1)[0][1] == 1  # one line per row
        assert sorted(x["row"] for x in lines) == list(range(1, 61))
        assert all(x["output"] == f"label of text {x['row'] - 1}" for x in lines)
        assert lines[0]["teacher"] == teacher.url and lines[0]["stopped_by_eos"] is True
        assert lines[0]["decoding"]["max_new_tokens"] == 16
    finally:
        teacher.close()


def test_a_refused_row_is_reported_and_kept_apart_and_tried_again(inputs, tmp_path, capsys):
    teacher = FakeTeacher(refuse={"text 7"}, delay=0.01)
    out = tmp_path / "d"
    try:
        assert main(_label_args(teacher.url, inputs, out)) == 0
        text = capsys.readouterr().out
        assert f"{inputs}:8: the teacher failed on this row: HTTP 400" in text
        assert "59 of 60 labels kept" in text and "teacher failed 1" in text
        teacher.refuse.clear()
        assert main(_label_args(teacher.url, inputs, out)) == 0
        assert "59 of 60 inputs already labelled" in capsys.readouterr().out
        lines = (out / "labels.jsonl").read_text().splitlines()
        assert [json.loads(x)["row"] for x in lines] != sorted(json.loads(x)["row"] for x in lines)
        pseudo = [json.loads(x)["input"] for x in (out / "pseudo.jsonl").read_text().splitlines()]
        assert pseudo == [f"text {i}" for i in range(60)]  # in the inputs' order
        assert teacher.seen["text 7"] == 2 and teacher.seen["text 6"] == 1
        from gentune.distill.report import labelling_cost

        cost = labelling_cost(out, {})  # both invocations, summed
        assert (cost["labelled"], cost["failed"], cost["invocations"]) == (60, 1, 2)
    finally:
        teacher.close()


def test_an_unreachable_or_failing_teacher_stops_with_one_line_and_keeps_the_labels(
    inputs, tmp_path, capsys
):
    broken = FakeTeacher(broken=True)
    out = tmp_path / "d"
    try:
        assert main(_label_args(broken.url, inputs, out, "--retries", "1")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "did not answer after 2 attempts (HTTP 500" in err[0]
        assert "the rows labelled so far are kept, run distill again to go on" in err[0]
    finally:
        broken.close()
    good = FakeTeacher()
    try:  # some rows labelled, then the server goes away
        assert main(_label_args(good.url, inputs, out, "--limit", "10")) == 0
    finally:
        good.close()
    assert main(_label_args(good.url, inputs, out, "--retries", "1")) == 2
    err = capsys.readouterr().err
    assert "did not answer after 2 attempts" in err and "Traceback" not in err
    labelled = [x for x in read_cache(out / "labels.jsonl").values() if x["output"]]
    assert len(labelled) == 10


def test_a_refused_key_or_a_wrong_url_stops_at_once(inputs, tmp_path, capsys):
    for code, says in ((401, "check --teacher-api-key"), (404, "no such endpoint")):
        teacher = FakeTeacher(broken=True, code=code)
        try:
            assert main(_label_args(teacher.url, inputs, tmp_path / str(code))) == 2
        finally:
            teacher.close()
        assert says in capsys.readouterr().err
        assert sum(teacher.seen.values()) <= 4  # not one request per row: the first answers


def test_test_rows_in_the_inputs_or_the_gold_are_warned_about():
    from gentune.data.records import Record
    from gentune.distill.pipeline import test_leaks

    def rec(src, i, text):
        return Record(source=src, row=i, input=text, output="o")

    test = [rec("test", 1, "Der Hund schläft im Garten."), rec("test", 2, "Ganz neu hier.")]
    lines = test_leaks(test, [rec("in", 5, "der hund schläft im garten")], [rec("gold", 1, "x")])
    assert lines == [
        "test rows whose input is also in --inputs (exact): 1, e.g. test:1 = in:5; the scores "
        "would be optimistic"
    ]


def test_filters_count_what_they_drop():
    def label(i, inp, out, eos=True):
        return {"row": i, "key": str(i), "input": inp, "output": out, "stopped_by_eos": eos}

    gold = ["a short title of five", "another title here", "three word title"] * 10
    labels = [
        label(1, "first paper abstract", "A good title"),
        label(2, "second paper abstract", None),  # the teacher failed
        label(3, "third paper abstract", "   "),
        label(4, "fourth paper abstract", "cut off at the cap", eos=False),
        label(5, "fifth paper abstract", "x"),  # too short? no: 1 word >= half of p1 (1.5)
        label(6, "sixth paper abstract", " ".join(["word"] * 20)),  # too long (> 1.5 x 5)
        label(7, "copy me if you can", "Copy me, if you can!"),
        label(8, "first paper abstract", "A second title"),  # its input again
        label(9, "ninth paper abstract", "Fine title"),
    ]
    kept, dropped = filter_labels(labels, gold)
    assert [k["output"] for k in kept] == ["A good title", "Fine title"]
    assert dropped == {
        "teacher failed": 1,
        "empty": 1,
        "not stopped by EOS": 1,
        "too short": 1,
        "too long": 1,
        "copies the input": 1,
        "duplicate input": 1,
        "length bounds (words)": [1.5, 7.5],
    }
    assert sum(v for v in dropped.values() if isinstance(v, int)) + len(kept) == len(labels)


def test_distill_end_to_end_on_tiny_models(trained_run, tiny_llama, tmp_path):
    """A local teacher (a tiny gentune run) labels inputs, the student trains on gold + pseudo
    (and gold alone), and the report puts base, students and teacher side by side."""
    gold = write_jsonl(tmp_path / "gold.jsonl", PAIRS * 2)
    test = write_jsonl(tmp_path / "test.jsonl", PAIRS[:6])
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"input": r["input"] + " again"} for r in PAIRS])
    out = tmp_path / "d"
    args = ["distill", "--task", "summarization", "--teacher", trained_run, "--inputs"]
    args += [str(inputs), "--gold", str(gold), "--test", str(test), "--out", str(out)]
    args += ["--student", tiny_llama, "--max-steps", "2", "--baseline", "--candidates", "2"]
    assert main([*args, "--no-progress"]) == 0
    labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == len(PAIRS)
    assert all(x["chosen_by"] == "score" and len(x["candidates"]) == 2 for x in labels)
    for x in labels:  # the teacher's best candidate by its own score
        assert x["score"] == max(x["scores"]) < 0
        assert x["output"] == x["candidates"][x["scores"].index(x["score"])]
    manifest = json.loads((out / "student" / "manifest.json").read_text())
    assert [Path(f["path"]).name for f in manifest["stats"]["mix"]] == [
        "gold.jsonl",
        "pseudo.jsonl",
    ]
    report = (out / "report.md").read_text()
    for name in ("base (", "| student |", "student (gold only)", f"teacher ({trained_run})"):
        assert name in report
    result = json.loads((out / "distill.json").read_text())
    assert set(result["training_seconds"]) == {"student", "student (gold only)"}


@pytest.mark.slow
def test_labels_through_gentune_serve_equal_gentune_generate(trained_run, tmp_path):
    """The URL teacher against gentune's own server (its run's template applied to the input):
    the labels are what `gentune generate` makes of the same inputs, stopped by EOS."""
    from gentune.config import Decoding
    from gentune.data.encode import encode_prompt
    from gentune.distill.demo import _free_port, _wait_ready
    from gentune.inference.generate import generate
    from gentune.inference.load import load_for_inference

    inputs = write_jsonl(tmp_path / "in.jsonl", [{"input": r["input"]} for r in PAIRS])
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "gentune", "serve", trained_run, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(url, server, timeout=120)
        assert main(_label_args(url, inputs, tmp_path / "d")) == 0
    finally:
        server.kill()
        server.wait()
    lines = (tmp_path / "d" / "labels.jsonl").read_text().splitlines()
    labels = sorted((json.loads(x) for x in lines), key=lambda x: x["row"])  # (as they came)
    loaded = load_for_inference(trained_run)
    records = [Record(source="x", row=i, input=r["input"]) for i, r in enumerate(PAIRS)]
    prompts = [
        encode_prompt(r, loaded.template, loaded.tokenizer, max_length=1024)[0] for r in records
    ]
    want = generate(loaded.model, loaded.tokenizer, prompts, Decoding(max_new_tokens=16))
    assert [x["output"] for x in labels] == [g.text for g in want]
    assert [x["stopped_by_eos"] for x in labels] == [g.finished for g in want]
    assert sum(x["stopped_by_eos"] for x in labels) >= 5  # the trained run mostly stops
