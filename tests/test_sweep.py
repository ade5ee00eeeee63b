"""gentune sweep: an Optuna study over training settings, each trial an ordinary run; workers
sharing one study, a killed sweep resumed, pruning, the best settings as a recipe."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

from gentune.cli import main
from gentune.config import SweepSettings
from gentune.runs import space, sweep

from .conftest import PAIRS, write_jsonl


@pytest.fixture
def recipe(tiny_llama, tmp_path):
    """A base recipe for short tiny-model trials (validation loss picks, two validations) and
    a space over the learning rate and the batch size."""
    rows = [{**p, "input": f"{p['input']} #{i}"} for i, p in enumerate(PAIRS * 4)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    base = {
        "task": "summarization",
        "model": tiny_llama,
        "data": str(data),
        "out": str(tmp_path / "unused"),
        "method": "full",
        "max_steps": 4,
        "eval_every": 2,
        "batch_size": 4,
        "metric": "val_loss",
        "eval_generate": 0,
        "samples": 0,
        "tensorboard": False,
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "space.yaml").write_text(
        yaml.safe_dump({"lr": {"low": 1e-8, "high": 1e-2, "log": True}, "lora_r": [4, 8]})
    )
    return tmp_path


def _run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gentune", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def _trials(out) -> list[dict]:
    with (out / "trials.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_workers_a_kill_and_a_resume_end_with_the_asked_trials(recipe):
    out = recipe / "sweep"
    common = ["--config", str(recipe / "base.yaml"), "--space", str(recipe / "space.yaml")]
    common += ["--out", str(out), "--no-prune"]  # (pruning: the test below)
    first = _run(["sweep", *common, "--trials", "2", "--workers", "2"])
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[worker 0]" in first.stdout and "[worker 1]" in first.stdout
    done = _trials(out)
    assert [r["state"] for r in done] == ["complete", "complete"]
    assert {r["run"] for r in done} == {str(out / "trials" / f"trial-00{n}") for n in (0, 1)}
    finished = {n: (out / "trials" / f"trial-00{n}" / "manifest.json").stat().st_mtime_ns
                for n in (0, 1)}  # fmt: skip

    # a sweep killed in the middle of its next trial (the process dies at step 2)
    killed = _run(["sweep", *common, "--trials", "4"], env={"GENTUNE_FAULT": "kill-after:2"})
    assert killed.returncode == -9
    assert not (out / "trials" / "trial-002" / "manifest.json").exists()

    resumed = _run(["sweep", *common, "--trials", "4", "--workers", "2"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "trial 2 was left running by process" in resumed.stdout
    rows = _trials(out)
    states = {int(r["trial"]): r["state"] for r in rows}
    assert states == {0: "complete", 1: "complete", 2: "fail", 3: "complete", 4: "complete"}
    assert len({r["lr"] for r in rows if r["state"] == "complete"}) == 4  # four distinct trials
    for n, mtime in finished.items():  # the finished trials were not run again
        assert (out / "trials" / f"trial-00{n}" / "manifest.json").stat().st_mtime_ns == mtime
    assert "trial 0 starts" not in resumed.stdout and "trial 1 starts" not in resumed.stdout

    # the best trial's settings, as a recipe that trains
    result = json.loads((out / "sweep.json").read_text())
    complete = [r for r in rows if r["state"] == "complete"]
    best = min(complete, key=lambda r: float(r["value"]))
    assert result["best"]["trial"] == int(best["trial"])
    recipe_ = yaml.safe_load((out / "best.yaml").read_text())
    assert recipe_["lr"] == pytest.approx(float(best["lr"]))
    assert recipe_["lora_r"] == int(best["lora_r"])
    assert main(["train", "--config", str(out / "best.yaml"), "--no-progress"]) == 0
    assert (out / "best-run" / "manifest.json").exists()
    assert (out / "compare" / "compare.html").exists()  # the top trials side by side


def test_pruning_stops_a_trial_far_behind(recipe):
    """Two good trials, then one planted with a learning rate too small to learn anything: the
    median pruner stops it at its first validation."""
    settings = SweepSettings(
        config=str(recipe / "base.yaml"), space=str(recipe / "space.yaml"),
        out=str(recipe / "sweep"), trials=3,
    )  # fmt: skip
    base, _ = sweep._base(settings)
    study = sweep.open_study(settings, base, seed=0)
    for lr in (5e-3, 4e-3, 1e-8):
        study.enqueue_trial({"lr": lr, "lora_r": 8})
    lines = []
    sweep.work(settings, log=lines.append)
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"], lines
    planted = recipe / "sweep" / "trials" / "trial-002"
    with (planted / "metrics.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2]  # stopped at step 2 of 4
    assert any("trial 2 pruned at epoch" in line for line in lines)
    assert any("the sweep's pruner" in line for line in lines)


def test_a_broken_space_is_one_line_naming_the_file_and_setting(recipe, capsys):
    (recipe / "bad.yaml").write_text("lr: {low: 1, high: 0.1}\nseed: [1, 2]\nlr_x: [1]\n")
    args = ["sweep", "--config", str(recipe / "base.yaml"), "--space", str(recipe / "bad.yaml")]
    assert main([*args, "--out", str(recipe / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(recipe / "bad.yaml") in err
    assert "lr: need numbers low < high" in err
    assert "seed: fixed in a sweep" in err
    assert "lr_x: not a training setting" in err
    assert not (recipe / "s" / "trials").exists()


def test_plan_for_a_sweep_prints_trials_times_time_per_trial(recipe, capsys):
    args = ["plan", "--config", str(recipe / "base.yaml"), "--space", str(recipe / "space.yaml")]
    assert main([*args, "--trials", "6", "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "sweep: 6 trials over 2 worker process(es); objective val_loss" in text
    assert "lr log-uniform [1e-08, 0.01]" in text and "lora_r {4, 8}" in text
    assert "training time per epoch (measured probe): full " in text
    assert "per trial: about " in text and "in all: about " in text


def test_worker_command_carries_every_setting():
    s = SweepSettings(config="b.yaml", space="s.yaml", out="o", trials=5, prune=False, workers=2)
    cmd = sweep.worker_command(s, 1)
    assert cmd[1:6] == ["-m", "gentune", "sweep", "--worker", "1"]
    assert "--no-prune" in cmd and cmd[cmd.index("--trials") + 1] == "5"
    assert "--workers" not in cmd


def test_mixing_weights_are_a_dimension_of_the_space(tmp_path):
    """data_weights: each --data file of the base recipe gets its trial's weight."""
    for name in ("a.jsonl", "b.jsonl"):
        write_jsonl(tmp_path / name, PAIRS)
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    (tmp_path / "space.yaml").write_text(
        yaml.safe_dump({"data_weights": {a: {"low": 0.5, "high": 2.0}}, "lr": [1e-4]})
    )
    dims = space.load_space(tmp_path / "space.yaml")
    assert [d.describe() for d in dims] == [f"weight:{a} uniform [0.5, 2]", "lr {0.0001}"]
    base = {"task": "summarization", "data": [a, f"{b}:3"], "out": "x"}
    settings = space.trial_settings(base, {f"weight:{a}": 1.5, "lr": 1e-4}, tmp_path / "t")
    assert settings["data"] == [f"{a}:1.5", f"{b}:3.0"]
    assert settings["lr"] == 1e-4 and settings["out"] == str(tmp_path / "t")
    assert settings["metric"] == "rougeL"  # the task's metric: every trial chooses by it
    assert settings["eval_generate"] == space.OBJECTIVE_ROWS  # every validation row
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"data_weights": [1, 2]}))
    with pytest.raises(Exception, match="data_weights: a mapping of --data file"):
        space.load_space(tmp_path / "bad.yaml")


def test_lora_targets_adapt_only_the_named_layers(tiny_llama):
    from gentune.errors import ConfigError
    from gentune.models.load import load_model, wrap_lora

    model = wrap_lora(load_model(tiny_llama)[0], r=4, alpha=8, dropout=0.0, targets="q_proj,v_proj")
    adapted = {
        n.split(".lora_A")[0].split(".")[-1] for n, _ in model.named_parameters() if "lora_A" in n
    }
    assert adapted == {"q_proj", "v_proj"}
    with pytest.raises(ConfigError, match="lora_targets='qq': qq not among the model's linear"):
        wrap_lora(load_model(tiny_llama)[0], r=4, alpha=8, dropout=0.0, targets="qq")


def test_the_time_budget_stops_new_trials_not_the_running_one(recipe, monkeypatch):
    """The sweep's clock (only the sweep's) moves 10 s a reading: the first claim is inside a
    15 s budget, the next one, after a trial, outside it."""
    import itertools
    import types

    clock = itertools.count(0.0, 10.0)
    monkeypatch.setattr(sweep, "time", types.SimpleNamespace(time=lambda: next(clock)))
    settings = SweepSettings(
        config=str(recipe / "base.yaml"), space=str(recipe / "space.yaml"),
        out=str(recipe / "sweep"), trials=4, time_budget=15.0, prune=False,
    )  # fmt: skip
    lines = []
    sweep.work(settings, log=lines.append)
    study = sweep.open_study(settings, sweep._base(settings)[0], seed=0)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"]  # it ran to its end
    assert lines[-1] == "gentune: sweep: the time budget (15 s) is spent"


def test_a_database_storage_is_shared_like_the_journal(recipe):
    """--storage URL (what several machines share): a SQLite database here, with Optuna's
    heartbeats on; a second invocation joins the study and only adds what is missing."""
    db = f"sqlite:///{recipe / 'study.db'}"
    common = dict(config=str(recipe / "base.yaml"), space=str(recipe / "space.yaml"),
                  out=str(recipe / "sweep"), storage=db, prune=False)  # fmt: skip
    sweep.work(SweepSettings(**common, trials=1), log=lambda *_: None)
    lines = []
    sweep.work(SweepSettings(**common, trials=2), log=lines.append)
    study = sweep.open_study(SweepSettings(**common), sweep._base(SweepSettings(**common))[0], 0)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE"]
    assert sum("starts" in line for line in lines) == 1  # the first trial was not run again
    assert not (recipe / "sweep" / "study.journal").exists()  # the database holds the study


def test_the_example_sweep_loads(tmp_path):
    """examples/sweep: the base is a valid recipe with every first choice of the space."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "examples" / "sweep"
    settings = SweepSettings(config=str(root / "base.yaml"), space=str(root / "space.yaml"),
                             out=str(tmp_path))  # fmt: skip
    base, dims = sweep._base(settings)
    assert base["val"].endswith("aclsum-title-val.jsonl")
    assert {d.name for d in dims} == {"method", "lr", "epochs", "batch_size", "lora_r",
                                      "lora_alpha", "lora_targets"}  # fmt: skip


def test_without_optuna_the_sweep_is_one_line(recipe, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "optuna" else real(n, *a))  # fmt: skip
    args = ["sweep", "--config", str(recipe / "base.yaml"), "--space", str(recipe / "space.yaml")]
    assert main([*args, "--out", str(recipe / "s")]) == 2
    assert capsys.readouterr().err.strip() == (
        "gentune sweep: error: Optuna is not installed: pip install 'gentune[sweep]'"
    )
