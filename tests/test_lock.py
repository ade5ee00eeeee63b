"""One writer per run or output directory, and inputs that are not data files: a second
writer is refused naming the first, a dead writer's lock is taken over, devices, FIFOs and
absurdly nested rows are refused by name before anything hangs or recurses."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gentune.cli import main
from gentune.data.records import MAX_DEPTH, read_records
from gentune.errors import DataError
from gentune.lock import LOCK_NAME, DirLock

from .conftest import PAIRS, tiny_cfg, write_jsonl

HOLD = (
    "import sys, time; from gentune.lock import DirLock; "
    "DirLock(sys.argv[1], path=None).acquire(); print('held', flush=True); time.sleep(120)"
)


def _holder(directory):
    """A process that holds the lock of `directory` until killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE,
                         text=True)  # fmt: skip
    assert p.stdout.readline().strip() == "held"
    return p


def _train_args(model, data, out, *extra):
    return ["train", "--task", "summarization", "--model", model, "--data", str(data),
            "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--no-progress",
            "--no-tensorboard", *extra]  # fmt: skip


def test_a_second_writer_is_refused_naming_the_first(tiny_llama, tmp_path, capsys):
    from gentune.training.train import train

    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    run = tmp_path / "run"
    cfg = tiny_cfg(tiny_llama, data, run, max_steps=2, batch_size=4)
    train(cfg, log=lambda *_: None)
    holder = _holder(run)
    try:
        for extra in (["--resume"], ["--overwrite"], []):
            assert main(_train_args(tiny_llama, data, run, *extra)) != 0
            err = capsys.readouterr().err
            assert f"process {holder.pid} on host" in err and "is writing it" in err, err
            assert "interrupted" not in err and "Traceback" not in err
        assert (run / "manifest.json").exists()  # the run the holder guards is untouched
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_writers_lock_is_taken_over_with_a_note(tiny_llama, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    run = tmp_path / "run"
    holder = _holder(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    record = json.loads((run / LOCK_NAME).read_text())
    assert record["pid"] == holder.pid  # the killed process never cleared its record
    assert main(_train_args(tiny_llama, data, run)) == 0
    err = capsys.readouterr().err
    assert f"left by process {holder.pid}" in err and "no longer running" in err
    assert (run / "manifest.json").exists()
    assert (run / LOCK_NAME).read_text() == ""  # released at the end: no record left


def test_evaluate_generate_and_export_refuse_a_held_directory(trained_run, tmp_path, capsys):
    held = write_jsonl(tmp_path / "held.jsonl", PAIRS[:2])
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        assert main(["evaluate", trained_run, "--data", str(held), "--out", str(out)]) != 0
        assert f"process {holder.pid}" in capsys.readouterr().err
        assert main(["generate", trained_run, "--data", str(held), "--out", str(out)]) != 0
        assert f"process {holder.pid}" in capsys.readouterr().err
        assert main(["explain", trained_run, "--data", str(held), "--out", str(out)]) != 0
        assert f"process {holder.pid}" in capsys.readouterr().err
        assert not (out / "predictions.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    export_to = tmp_path / "exported"
    lock = DirLock(export_to, path=tmp_path / ".exported.gentune.lock").acquire()
    try:
        assert main(["export", trained_run, "--out", str(export_to)]) != 0
        assert f"process {os.getpid()}" in capsys.readouterr().err
    finally:
        lock.release()
    assert main(["export", trained_run, "--out", str(export_to)]) == 0


def test_devices_fifos_and_sockets_are_refused_by_name(tmp_path):
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    for path, kind in (("/dev/zero", "character device"), (str(fifo), "FIFO")):
        with pytest.raises(DataError, match=kind):
            read_records(path, kind="pairs")
    # the whole command ends at once, with one line (before: /dev/zero was hashed for ever and
    # a FIFO nobody writes to blocked its reader)
    for path in ("/dev/zero", "/dev/urandom", str(fifo)):
        cmd = [sys.executable, "-m", "gentune.cli", "plan", "--task", "summarization",
               "--data", path, "--out", str(tmp_path / "r")]  # fmt: skip
        started = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and time.time() - started < 120
        assert "not a data file" in done.stderr and "Traceback" not in done.stderr


def test_rows_nested_too_deep_are_a_data_error_naming_the_row(tmp_path):
    deep = "[" * 5000 + "]" * 5000  # deeper than Python's JSON parser recurses
    rows = [json.dumps(PAIRS[0]), json.dumps({"input": deep, "output": "x"}).replace(
        json.dumps(deep), deep)]  # fmt: skip
    path = tmp_path / "deep.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"deep.jsonl:2: .*more than 64 levels"):
        read_records(path, kind="pairs")
    nested = {"input": "x", "output": "y", "extra": json.loads("[" * 100 + "]" * 100)}
    write_jsonl(path, [PAIRS[0], PAIRS[1], nested])
    with pytest.raises(DataError, match=r"deep.jsonl:3: "):
        read_records(path, kind="pairs")
    ok = {
        "input": "x",
        "output": "y",
        "extra": json.loads("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)),
    }
    write_jsonl(path, [ok])
    assert read_records(path, kind="pairs")[0].output == "y"
    as_array = tmp_path / "deep.json"
    as_array.write_text("[" + json.dumps(PAIRS[0]) + ", " + rows[1] + "]")
    with pytest.raises(DataError, match="deep.json:"):
        read_records(as_array, kind="pairs")
