"""--report-to trackio / mlflow: the numbers of metrics.csv, the settings and the samples in a
real local store; a tracker that cannot start or log says so in one line and training goes on."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from gentune.training.train import train

from .conftest import PAIRS, tiny_cfg, write_jsonl


@pytest.fixture
def data(tmp_path):
    rows = [{**p, "input": f"{p['input']} #{i}"} for i, p in enumerate(PAIRS * 4)]
    return write_jsonl(tmp_path / "d.jsonl", rows)


def _cfg(tiny_llama, data, out, **kw):
    return tiny_cfg(tiny_llama, data, out, method="full", max_steps=4, eval_every=2,
                    batch_size=4, lr=5e-3, samples=2, **kw)  # fmt: skip


def _csv(run) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_mlflow_store_holds_the_csv_numbers_settings_and_samples(tiny_llama, data, tmp_path):
    from mlflow.tracking import MlflowClient

    lines = []
    store = tmp_path / "mlflow"
    cfg = _cfg(tiny_llama, data, tmp_path / "run", report_to="mlflow", tracker_dir=str(store))
    run = train(cfg, log=lines.append)
    assert any(
        line.startswith("gentune: --report-to mlflow: logging to sqlite:///") for line in lines
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    [found] = client.search_runs([client.get_experiment_by_name("gentune").experiment_id])
    assert found.info.status == "FINISHED"
    logged = {m.step: m.value for m in client.get_metric_history(found.info.run_id, "loss")}
    assert logged == {int(r["step"]): pytest.approx(float(r["loss"])) for r in _csv(run)}
    val = {m.step: m.value for m in client.get_metric_history(found.info.run_id, "val_loss")}
    assert val == {int(r["step"]): pytest.approx(float(r["val_loss"])) for r in _csv(run)
                   if r["val_loss"]}  # fmt: skip
    assert json.loads(found.data.params["lr"]) == 5e-3
    assert json.loads(found.data.params["max_steps"]) == 4
    artifacts = [a.path for a in client.list_artifacts(found.info.run_id, "samples")]
    assert artifacts == ["samples/step-00000002.jsonl", "samples/step-00000004.jsonl"]
    text = (store / "artifacts").rglob("step-00000004.jsonl").__next__().read_text()
    ours = [r for r in map(json.loads, (run / "samples.jsonl").read_text().splitlines())
            if r["step"] == 4]  # fmt: skip
    assert [json.loads(line) for line in text.splitlines()] == ours


def test_trackio_store_holds_the_csv_numbers_settings_and_samples(tiny_llama, data, tmp_path):
    """In a process of its own: trackio fixes its folder when it is imported."""
    store, run = tmp_path / "trackio", tmp_path / "run"
    cmd = [sys.executable, "-m", "gentune", "train", "--task", "summarization", "--model",
           tiny_llama, "--data", str(data), "--out", str(run), "--method", "full",
           "--max-steps", "4", "--eval-every", "2", "--batch-size", "4", "--lr", "5e-3",
           "--samples", "2", "--no-progress", "--no-tensorboard", "--report-to", "trackio",
           "--tracker-dir", str(store)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"gentune: --report-to trackio: logging to {store}" in done.stdout + done.stderr
    assert "could not" not in done.stdout + done.stderr  # it kept every row (read back)
    read = (
        "import json, sys\nfrom trackio.sqlite_storage import SQLiteStorage as S\n"
        "name = S.get_runs('gentune')[0]\n"
        "print(json.dumps({'runs': S.get_runs('gentune'), 'logs': S.get_logs('gentune', name),"
        " 'config': S.get_run_config('gentune', name)}, default=str))"
    )
    out = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True,
                         env={**os.environ, "TRACKIO_DIR": str(store)}, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["runs"] == [f"run-{got['runs'][0].rsplit('-', 1)[1]}"]
    losses = {r["step"]: r["loss"] for r in got["logs"] if "loss" in r}
    assert losses == {int(r["step"]): pytest.approx(float(r["loss"])) for r in _csv(run)}
    tables = [r for r in got["logs"] if "samples" in r]
    assert [t["step"] for t in tables] == [2, 4]
    ours = [r["output"] for r in map(json.loads, (run / "samples.jsonl").read_text().splitlines())
            if r["step"] == 4]  # fmt: skip
    assert [row["output"] for row in tables[-1]["samples"]["_value"]] == ours
    assert got["config"]["lr"] == 5e-3


@pytest.mark.parametrize("tracker", ["mlflow", "trackio"])
def test_a_tracker_that_cannot_write_is_one_line_and_the_run_completes(
    tracker, tiny_llama, data, tmp_path
):
    (tmp_path / "a-file").write_text("")
    lines = []
    cfg = _cfg(tiny_llama, data, tmp_path / "run", report_to=tracker,
               tracker_dir=str(tmp_path / "a-file" / "store"))  # fmt: skip
    run = train(cfg, log=lines.append)
    said = [line for line in lines if "--report-to" in line]
    assert len(said) == 1, said
    assert said[0].startswith(f"gentune: --report-to {tracker}: could not start (cannot write in")
    assert "training goes on without it" in said[0]
    assert (run / "manifest.json").exists() and len(_csv(run)) == 4


def test_a_tracker_failing_mid_run_is_dropped_with_one_line(
    tiny_llama, data, tmp_path, monkeypatch
):
    from gentune.training import trackers

    def broken(self, row):
        if row["step"] == 3:
            raise ConnectionError("the tracking server went away\nsecond line")

    monkeypatch.setattr(trackers.MLflow, "log", broken)
    lines = []
    cfg = _cfg(tiny_llama, data, tmp_path / "run", report_to="mlflow",
               tracker_dir=str(tmp_path / "ml"))  # fmt: skip
    run = train(cfg, log=lines.append)
    said = [line for line in lines if "could not" in line]
    assert said == [
        "gentune: --report-to mlflow: could not log (the tracking server went away); training "
        "goes on without it, metrics.csv has every number"
    ]
    assert len(_csv(run)) == 4


def test_a_tracker_not_installed_is_one_line(tiny_llama, data, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a)
    )
    lines = []
    run = train(_cfg(tiny_llama, data, tmp_path / "run", report_to="mlflow"), log=lines.append)
    assert [line for line in lines if "--report-to" in line] == [
        "gentune: --report-to mlflow: mlflow is not installed (pip install 'gentune[track]'); "
        "training goes on, metrics.csv has every number"
    ]
    assert (run / "manifest.json").exists()


def test_report_to_names_its_choices():
    from gentune.config import TrainConfig
    from gentune.errors import ConfigError

    with pytest.raises(ConfigError, match="report_to='wandb': choose trackio, mlflow"):
        TrainConfig(task="summarization", data="d.jsonl", out="o", report_to="wandb")


def test_a_store_that_kept_fewer_rows_than_sent_is_said(tiny_llama, data, tmp_path, monkeypatch):
    """The end-of-run read-back: a store that lost rows (planted) is one line, not silence."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(MlflowClient, "get_metric_history", lambda self, run_id, key: [])
    lines = []
    cfg = _cfg(tiny_llama, data, tmp_path / "run", report_to="mlflow",
               tracker_dir=str(tmp_path / "ml"))  # fmt: skip
    train(cfg, log=lines.append)
    assert [line for line in lines if "could not" in line] == [
        "gentune: --report-to mlflow: could not keep what it was sent (it kept 0 of the 4 steps "
        "sent); the run is complete, metrics.csv has every number"
    ]
