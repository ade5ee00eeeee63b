"""Checkpoints and exact resume: SIGKILL during a save and at random moments, then resume, bit for bit; keep-last-K plus best; resume refused with other settings or data, allowed for a copied run; no pickle."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gentune import checkpoint
from gentune.errors import TrainingError
from gentune.rundir import read_log

from .conftest import _data

ROOT = Path(__file__).resolve().parent.parent


COMPARED = (
    "step",
    "epoch",
    "loss",
    "lr",
    "grad_norm",
    "tokens",
    "target_tokens",
    "val_loss",
    "val_perplexity",
    "val_metric",
)


def _args(model, data, out, *extra):
    return [
        "train",
        "--task",
        "summarization",
        "--method",
        "lora",
        "--data",
        str(data),
        "--model",
        model,
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--lr",
        "5e-3",
        "--max-steps",
        "40",
        "--save-every",
        "3",
        "--eval-every",
        "5",
        "--eval-generate",
        "0",
        "--no-progress",
        "--no-tensorboard",
        *extra,
    ]


def _run(args, env_extra=None, wait=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env_extra or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gentune", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if wait:
        out, _ = proc.communicate(timeout=300)
        return proc.returncode, out
    return proc


def _curve(run):
    return [{k: r[k] for k in COMPARED} for r in read_log(run)]


def _weights(run):
    return load_file(run / "model" / "adapter_model.safetensors")


def _assert_same(run_a, run_b):
    assert _curve(run_a) == _curve(run_b)
    # the outputs sampled at every validation too (a resumed run's come from its checkpoint)
    assert (run_a / "samples.jsonl").read_text() == (run_b / "samples.jsonl").read_text()
    a, b = _weights(run_a), _weights(run_b)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(tiny_llama, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    data = _data(tmp)
    code, out = _run(_args(tiny_llama, data, tmp / "run"))
    assert code == 0, out
    return data, tmp / "run"


@pytest.mark.slow
def test_kill_during_checkpoint_save_then_resume_is_exact(tiny_llama, reference, tmp_path):
    data, ref = reference
    run = tmp_path / "run"
    code, out = _run(_args(tiny_llama, data, run), {"GENTUNE_FAULT": "kill-in-save:9"})
    assert code == -signal.SIGKILL, out
    # the half-written checkpoint of step 9 is there, but never picked
    assert list(checkpoint.root(run).glob(".tmp-step-00000009"))
    assert checkpoint.latest(run).name == "step-00000006"
    code, out = _run(_args(tiny_llama, data, run, "--resume"))
    assert code == 0, out
    assert "resumed from" in out and "step 6" in out
    assert not list(checkpoint.root(run).glob(".tmp-*"))
    _assert_same(run, ref)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_exact(tiny_llama, reference, tmp_path):
    data, ref = reference
    run = tmp_path / "run"
    rng = random.Random(1234)
    kills = 0
    for attempt in range(6):
        proc = _run(_args(tiny_llama, data, run, *(["--resume"] if attempt else [])), wait=False)
        # wait for training to be under way, then kill at a random moment
        deadline = time.time() + 120
        log = run / "metrics.csv"
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) > 2:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
        if proc.returncode == 0:
            break
    if proc.returncode != 0:
        code, out = _run(_args(tiny_llama, data, run, "--resume"))
        assert code == 0, out
    assert kills >= 1
    _assert_same(run, ref)


@pytest.mark.slow
def test_checkpoints_keep_last_k_plus_best(reference):
    _, ref = reference
    names = [p.name for p in checkpoint.complete(ref)]
    manifest = json.loads((ref / "manifest.json").read_text())
    best = manifest["stats"]["best_checkpoint"].split("/")[-1]
    assert names[-1] == "step-00000040"
    assert best in names and len(names) <= 3


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(tiny_llama, reference, tmp_path):
    data, ref = reference
    code, out = _run(_args(tiny_llama, data, ref, "--resume", "--lr", "1e-3"))
    assert code != 0 and "cannot resume with different settings" in out and "lr" in out


@pytest.mark.slow
def test_copied_run_with_moved_data_resumes_exactly(tiny_llama, reference, tmp_path):
    """Resuming compares settings and the data's content, not paths: a run copied elsewhere,
    with its data file moved, continues to the uninterrupted result."""
    data, ref = reference
    run = tmp_path / "run"
    code, out = _run(_args(tiny_llama, data, run), {"GENTUNE_FAULT": "kill-after:10"})
    assert code == -signal.SIGKILL, out
    moved_data = tmp_path / "elsewhere" / "data-copy.jsonl"
    moved_data.parent.mkdir()
    moved_data.write_bytes(Path(data).read_bytes())
    copy = tmp_path / "copied-run"
    import shutil

    shutil.copytree(run, copy)
    shutil.rmtree(run)
    code, out = _run(_args(tiny_llama, moved_data, copy, "--resume"))
    assert code == 0, out
    assert "resumed from" in out
    _assert_same(copy, ref)
    # other content under the same settings is refused, naming the file
    changed = tmp_path / "changed.jsonl"
    changed.write_text(Path(data).read_text().replace("#1", "#one"))
    shutil.copytree(ref, tmp_path / "ref-copy")
    (tmp_path / "ref-copy" / "manifest.json").unlink()
    code, out = _run(_args(tiny_llama, changed, tmp_path / "ref-copy", "--resume"))
    assert code == 2 and "the data file's content differs" in out


@pytest.mark.slow
def test_no_pickle_in_checkpoints(reference, monkeypatch, tiny_llama):
    """Checkpoints hold safetensors and JSON only; loading one never unpickles."""
    import pickle

    _, ref = reference
    last = checkpoint.latest(ref)
    files = sorted(p.name for p in last.iterdir())
    assert not [f for f in files if f.endswith((".pt", ".pkl", ".bin"))], files
    assert {
        "optimizer.json",
        "scheduler.json",
        "rng.json",
        "rng.safetensors",
        "state.json",
        "shards",
    } <= set(files)
    assert all(p.suffix == ".safetensors" for p in (last / "shards").iterdir())

    def refuse(*a, **k):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    from gentune.models.load import load_model, wrap_lora

    model, _, _ = load_model(tiny_llama)
    model = wrap_lora(model, r=16, alpha=32, dropout=0.0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1.0)
    state = checkpoint.load(last, model=model, optimizer=opt)
    assert state["step"] == int(last.name.split("-")[1])
    assert opt.state and all(float(s["step"]) == state["step"] for s in opt.state.values())
    assert opt.param_groups[0]["lr"] != 1.0 and isinstance(opt.param_groups[0]["betas"], tuple)
    saved = checkpoint.saved_weights(last)
    params = dict(model.named_parameters())
    assert saved and all(torch.equal(params[k], v) for k, v in saved.items())
    rng = checkpoint.load_tree(last, "rng")
    assert isinstance(rng["python"], tuple) and rng["torch"].dtype == torch.uint8


def test_state_tree_round_trip_is_exact(tmp_path):
    tree = {
        "state": {0: {"step": torch.tensor(3.0), "m": torch.randn(2, 3)}},
        "groups": [{"betas": (0.9, 0.999), "lr": 1e-3 / 3, "none": None, "flag": True}],
        "big": 2**63 + 5,
        "nan": float("nan"),
        "text": "ü",
    }
    checkpoint.save_tree(tree, tmp_path, "t")
    back = checkpoint.load_tree(tmp_path, "t")
    assert back["groups"] == tree["groups"] and back["big"] == tree["big"]
    assert back["text"] == "ü" and back["nan"] != back["nan"]
    assert torch.equal(back["state"][0]["m"], tree["state"][0]["m"])
    assert list(back["state"]) == [0]
    (tmp_path / "optimizer.pt").write_bytes(b"old")
    with pytest.raises(TrainingError, match="old pickle format"):
        checkpoint.load(tmp_path, model=torch.nn.Linear(1, 1))


def test_saving_and_loading_in_one_process_warn_of_nothing(tiny_llama, tmp_path):
    """torch.distributed.checkpoint warns when there is no process group; one process is a
    normal way to train, so a user sees no such warning at every checkpoint."""
    import warnings

    from transformers import get_scheduler

    from gentune.models.load import load_model

    model, _, _ = load_model(tiny_llama)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = get_scheduler("constant", opt)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        path = checkpoint.save(tmp_path, 1, model=model, optimizer=opt, scheduler=sched,
                               state={}, keep_last=1)  # fmt: skip
        checkpoint.load(path, model=model, optimizer=opt, scheduler=sched)
    assert not [w for w in seen if "torch.distributed" in str(w.message)]


def _file_size_limit(limit: int):
    """For a child process: writes past `limit` bytes fail with EFBIG (the signal that would
    kill it ignored), as on a full disk."""
    import resource

    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return apply


@pytest.mark.slow
def test_a_full_disk_ends_training_in_one_line_and_resume_continues_exactly(
    tiny_llama, reference, tmp_path
):
    """A checkpoint that cannot be written (here: over a file-size limit the test sets) ends
    the run with one line naming the path and what was being written; the last complete
    checkpoint stays usable, and once there is room --resume finishes as if nothing happened."""
    data, ref = reference
    run = tmp_path / "run"
    code, out = _run(_args(tiny_llama, data, run), {"GENTUNE_FAULT": "kill-after:10"})
    assert code == -signal.SIGKILL, out
    last = checkpoint.latest(run).name  # the last complete checkpoint before the kill
    biggest = max(p.stat().st_size for p in checkpoint.latest(run).rglob("*") if p.is_file())
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "gentune", *_args(tiny_llama, data, run, "--resume")],
        env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=_file_size_limit(biggest // 2),
    )  # fmt: skip
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "cannot write the checkpoint of step" in err[-1], err[-1]
    assert "over the file-size limit" in err[-1] and f"({last}) is intact" in err[-1]
    assert "--resume" in err[-1]
    assert checkpoint.latest(run).name == last  # nothing half-written is taken
    code, out = _run(_args(tiny_llama, data, run, "--resume"))  # room again
    assert code == 0, out
    assert "resumed from" in out and f"step {int(last.split('-')[-1])}" in out
    assert not list(checkpoint.root(run).glob(".tmp-*"))
    _assert_same(run, ref)


def test_a_full_disk_under_safetensors_writer_is_a_disk_error(tmp_path):
    """safetensors' writer (checkpoints of one process, the run's final model) reports a full
    disk as a SafetensorError, not an OSError: it is still found as the one-line disk error,
    naming the checkpoint's file (before: a traceback asking to report a bug)."""
    import errno
    import resource

    from gentune.errors import disk_error

    tensors = {"model.w": torch.ones(1 << 16), "optim.w.exp_avg": torch.zeros(1 << 16)}
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, limits[1]))
    try:
        with pytest.raises(OSError) as raised:
            checkpoint._write_plain(tensors, tmp_path / "shards")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    found = disk_error(raised.value)
    assert found is not None and found.errno == errno.EFBIG
    assert found.filename and found.filename.startswith(str(tmp_path / "shards"))
    assert type(raised.value.__cause__).__name__ == "SafetensorError"
    assert disk_error(raised.value.__cause__) is not None  # as save_pretrained raises it


def test_one_process_shards_are_the_distributed_checkpoints_own(tiny_llama, tmp_path):
    """The shards one process writes with safetensors are the files DCP's own writer writes:
    the same names, tensors and headers (the resume and kill tests load them back)."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    tensors, _ = checkpoint._tensors(model, opt)
    checkpoint._write_plain(tensors, tmp_path / "ours")
    checkpoint._write_dcp(tensors, tmp_path / "dcp")
    ours = sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert ours == sorted(p.name for p in (tmp_path / "dcp").iterdir()) and ours
    for name in ours:
        with (
            safe_open(tmp_path / "ours" / name, "pt") as a,
            safe_open(tmp_path / "dcp" / name, "pt") as b,
        ):
            meta_a, meta_b = a.metadata(), b.metadata()
            assert json.loads(meta_a.pop("DCP_SHARDING_INFO")) == json.loads(
                meta_b.pop("DCP_SHARDING_INFO")
            )
            assert meta_a == meta_b
            assert sorted(a.keys()) == sorted(b.keys())
            for k in a.keys():
                assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k


def test_only_whole_contiguous_cpu_tensors_skip_dcp():
    """safetensors writes a tensor as it lies in memory: a transposed (non-contiguous) one,
    like a sharded or GPU one, goes through torch.distributed.checkpoint's writer instead."""
    assert checkpoint._plain({"model.w": torch.ones(2, 3), "optim.w.step": torch.tensor(1.0)})
    assert not checkpoint._plain({"model.w": torch.ones(2, 3).t()})
