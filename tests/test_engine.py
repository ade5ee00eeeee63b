"""The training engine: checkpoints and exact resume under SIGKILL, NaN guard, early stopping,
packing, recipes."""

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
from gentune.config import ConfigError, TrainConfig
from gentune.encode import collate, collate_packed, encode_dataset, pack_examples
from gentune.models import load_model
from gentune.runs import read_log
from gentune.train import TrainingError, train

from .conftest import PAIRS, write_jsonl

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


def _data(tmp_path, n=40):
    rows = [
        PAIRS[i % len(PAIRS)] | {"input": PAIRS[i % len(PAIRS)]["input"] + f" #{i}"}
        for i in range(n)
    ]
    return write_jsonl(tmp_path / "data.jsonl", rows)


def _args(model, data, out, *extra):
    return [
        "train",
        "--task",
        "summarization",
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


def test_kill_during_checkpoint_save_then_resume_is_exact(tiny_llama, reference, tmp_path):
    data, ref = reference
    run = tmp_path / "run"
    code, out = _run(_args(tiny_llama, data, run), {"GENTUNE_FAULT": "kill-in-save:9"})
    assert code == -signal.SIGKILL, out
    # the half-written checkpoint of step 9 is there, but never picked
    assert list(checkpoint.root(run).glob(".tmp-step-00000009-*"))
    assert checkpoint.latest(run).name == "step-00000006"
    code, out = _run(_args(tiny_llama, data, run, "--resume"))
    assert code == 0, out
    assert "resumed from" in out and "step 6" in out
    assert not list(checkpoint.root(run).glob(".tmp-*"))
    _assert_same(run, ref)


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


def test_checkpoints_keep_last_k_plus_best(reference):
    _, ref = reference
    names = [p.name for p in checkpoint.complete(ref)]
    manifest = json.loads((ref / "manifest.json").read_text())
    best = manifest["stats"]["best_checkpoint"].split("/")[-1]
    assert names[-1] == "step-00000040"
    assert best in names and len(names) <= 3


def test_resume_with_other_settings_is_refused(tiny_llama, reference, tmp_path):
    data, ref = reference
    code, out = _run(_args(tiny_llama, data, ref, "--resume", "--lr", "1e-3"))
    assert code != 0 and "cannot resume with different settings" in out and "lr" in out


def test_nan_loss_stops_with_step_and_leaves_last_checkpoint(tiny_llama, tmp_path, monkeypatch):
    import gentune.train as train_mod

    calls = {"n": 0}
    real = train_mod.token_nll

    def poisoned(model, batch):
        nll, n = real(model, batch)
        calls["n"] += 1
        if calls["n"] == 2 * 5 - 1:  # the first micro-batch of step 5
            nll = nll * float("nan")
        return nll, n

    monkeypatch.setattr(train_mod, "token_nll", poisoned)
    cfg = TrainConfig(
        task="summarization",
        data=str(_data(tmp_path)),
        out=str(tmp_path / "r"),
        model=tiny_llama,
        batch_size=4,
        micro_batch_size=2,
        max_steps=10,
        save_every=2,
        eval_generate=0,
        progress=False,
        tensorboard=False,
        eval_every=100,
    )
    with pytest.raises(TrainingError, match=r"loss became nan .* at step 5.*step-00000004"):
        train(cfg, log=lambda *_: None)
    last = checkpoint.latest(tmp_path / "r")
    assert last.name == "step-00000004"
    model, _, _ = load_model(tiny_llama)
    from gentune.models import wrap_lora

    model = wrap_lora(model, r=16, alpha=32, dropout=0.05)
    state = checkpoint.load(last, model=model)
    assert state["step"] == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_early_stopping_stops_at_the_expected_step(tiny_llama, tmp_path, monkeypatch):
    import gentune.validation as validation_mod

    losses = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8, 2.9])
    monkeypatch.setattr(validation_mod, "evaluate_loss", lambda *a, **k: (v := next(losses), v))
    cfg = TrainConfig(
        task="summarization",
        data=str(_data(tmp_path)),
        out=str(tmp_path / "r"),
        model=tiny_llama,
        batch_size=4,
        max_steps=20,
        eval_every=2,
        patience=2,
        eval_generate=0,
        progress=False,
        tensorboard=False,
    )
    run = train(cfg, log=lambda *_: None)
    stats = json.loads((run / "manifest.json").read_text())["stats"]
    # validations at steps 2, 4 (best), 6, 8 -> two without improvement: stop at step 8
    assert stats["stopped_early"] and stats["steps"] == 8
    assert stats["best_checkpoint"] == "checkpoints/step-00000004"
    assert stats["model_step"] == 4  # the run's model is the best checkpoint
    assert (run / "checkpoints" / "step-00000004").exists()
    best = load_file(run / "checkpoints" / "step-00000004" / "trainable.safetensors")
    final = load_file(run / "model" / "adapter_model.safetensors")
    for k, v in best.items():
        short = k.replace("base_model.model.", "").replace(".default", "")
        match = [fk for fk in final if fk.replace("base_model.model.", "") == short]
        assert match and torch.equal(final[match[0]], v)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_packed_batch_gives_the_same_per_example_losses(request, fixture):
    from gentune.data import Record
    from gentune.tasks import build_template, get_task

    model, tok, _ = load_model(request.getfixturevalue(fixture))
    model.eval()
    tpl = build_template(get_task("summarization"), tok)
    recs = [Record(source="d", row=i, **r) for i, r in enumerate(PAIRS, start=1)]
    exs, _ = encode_dataset(recs, tpl, tok, max_length=128)
    packed = pack_examples(exs, max_length=128)
    assert len(packed) < len(exs)  # several examples share a row

    def per_token_nll(batch):
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch.get("attention_mask"),
                position_ids=batch.get("position_ids"),
                use_cache=False,
            ).logits
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels.clamp(min=0), reduction="none"
        )
        return nll * (labels != -100)

    unpacked = per_token_nll(collate(exs, tok.pad_token_id)).sum(1)
    expected = {e.where: float(v) for e, v in zip(exs, unpacked)}
    nll = per_token_nll(collate_packed(packed, tok.pad_token_id))
    for row, ex in enumerate(packed):
        start = 0
        for where, length in zip(ex.where.split(","), ex.lengths):
            got = float(nll[row, start : start + length - 1].sum())
            assert got == pytest.approx(expected[where], rel=1e-4, abs=1e-4), where
            start += length


def test_packing_trains(tiny_llama, tmp_path):
    cfg = TrainConfig(
        task="summarization",
        data=str(_data(tmp_path)),
        out=str(tmp_path / "r"),
        model=tiny_llama,
        batch_size=2,
        max_steps=6,
        packing=True,
        lr=5e-3,
        eval_generate=0,
        progress=False,
        tensorboard=False,
        max_length=128,
    )
    run = train(cfg, log=lambda *_: None)
    log = read_log(run)
    assert len(log) == 6 and float(log[-1]["loss"]) < float(log[0]["loss"])


def test_every_recipe_loads():
    recipes = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(recipes) >= 4
    tasks = set()
    for recipe in recipes:
        header = recipe.read_text().splitlines()[0]
        assert header.startswith("# ") and "gentune" in header, recipe
        cfg = TrainConfig.from_sources(str(recipe))
        tasks.add(cfg.task)
        data = ROOT / cfg.data
        if not cfg.data.startswith("runs/"):  # files shipped with the examples
            assert data.exists(), data
    assert tasks == {"summarization", "translation", "dialogue", "text"}


def test_recipe_overrides_and_all_problems_together(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: summarization\ndata: d.jsonl\nout: o\nlr: 0.001\n")
    cfg = TrainConfig.from_sources(str(recipe), {"epochs": 2.0}, ["lr=1e-4", "packing=true"])
    assert cfg.lr == 1e-4 and cfg.epochs == 2.0 and cfg.packing is True
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_sources(str(recipe), {}, ["lr=fast", "epohcs=3", "method=qlora"])
    msg = str(e.value)
    assert "lr='fast'" in msg and "'epohcs'" in msg and "did you mean 'epochs'" in msg
    assert "method='qlora'" in msg


def test_plan_shows_counts_spans_parameters_and_estimates(tiny_llama, tmp_path):
    from gentune.plan import plan

    rows = [{"input": "word " * 300, "output": "Short."}] + PAIRS
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = TrainConfig(
        task="summarization",
        data=str(data),
        out=str(tmp_path / "r"),
        model=tiny_llama,
        max_length=64,
        batch_size=2,
        val_fraction=0.1,
    )
    text = plan(cfg)
    assert "rows: 10 train, 1 validation" in text or "rows: 9 train, 2 validation" in text
    assert "tokens per example, context (masked): p50" in text
    assert "rows get their input shortened" in text
    assert "targets with no trainable tokens besides EOS: 0" in text
    assert "⟦" in text and "⟧" in text and "### Response" not in text.split("⟦")[1]
    assert "trainable of" in text
    assert "min per epoch" in text and "peak memory" in text
    assert not (tmp_path / "r").exists()  # planning writes nothing


def test_run_has_loss_curve_png(tiny_gpt2, tmp_path):
    cfg = TrainConfig(
        task="summarization",
        data=str(_data(tmp_path, 8)),
        model=tiny_gpt2,
        out=str(tmp_path / "r"),
        max_steps=3,
        batch_size=2,
        eval_generate=2,
        metric="rougeL",
        progress=False,
        tensorboard=False,
    )
    run = train(cfg, log=lambda *_: None)
    png = (run / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    log = read_log(run)
    assert log[-1]["val_metric"] != "" and float(log[-1]["peak_memory_mb"]) > 0


def test_out_of_memory_gives_an_actionable_message(tiny_llama, tmp_path, monkeypatch):
    import gentune.train as train_mod

    def no_memory(*a, **k):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
            "allocate memory: you tried to allocate 123456789 bytes."
        )

    monkeypatch.setattr(train_mod, "token_nll", no_memory)
    cfg = TrainConfig(
        task="summarization",
        data=str(_data(tmp_path)),
        out=str(tmp_path / "r"),
        model=tiny_llama,
        max_steps=2,
        progress=False,
        tensorboard=False,
    )
    with pytest.raises(
        TrainingError,
        match=r"out of memory at step 1 .*--micro-batch-size.*"
        r"--gradient-checkpointing",
    ):
        train(cfg, log=lambda *_: None)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_keeps_the_loss_curve(tiny_llama, tmp_path, method):
    curves = []
    for flag in (False, True):
        cfg = TrainConfig(
            task="summarization",
            data=str(_data(tmp_path)),
            method=method,
            out=str(tmp_path / f"r{flag}"),
            model=tiny_llama,
            max_steps=4,
            batch_size=4,
            lr=5e-3,
            gradient_checkpointing=flag,
            eval_generate=0,
            progress=False,
            tensorboard=False,
        )
        curves.append([float(r["loss"]) for r in read_log(train(cfg, log=lambda *_: None))])
    assert curves[0] == pytest.approx(curves[1], rel=1e-5)


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


def test_no_pickle_in_checkpoints(reference, monkeypatch, tiny_llama):
    """Checkpoints hold safetensors and JSON only; loading one never unpickles."""
    import pickle

    _, ref = reference
    last = checkpoint.latest(ref)
    files = sorted(p.name for p in last.iterdir())
    assert not [f for f in files if f.endswith((".pt", ".pkl", ".bin"))], files
    assert {
        "optimizer.json",
        "optimizer.safetensors",
        "scheduler.json",
        "rng.json",
        "rng.safetensors",
        "state.json",
        "trainable.safetensors",
    } <= set(files)

    def refuse(*a, **k):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    opt = checkpoint.load_tree(last, "optimizer")
    assert opt["state"] and all(isinstance(k, int) for k in opt["state"])
    assert isinstance(opt["param_groups"][0]["betas"], tuple)
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
