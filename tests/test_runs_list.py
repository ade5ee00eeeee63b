"""gentune runs: the runs under a directory, and `runs compare` of several on one page."""

from __future__ import annotations

import json

import pytest

from gentune.cli import main
from gentune.training.train import train

from .conftest import PAIRS, tiny_cfg, write_jsonl
from .test_playground_e2e import browser  # noqa: F401  (the fixture; skips without chromium)


@pytest.fixture(scope="module")
def two_runs(tiny_llama, tmp_path_factory):
    """Two tiny runs on the same rows that differ in their learning rate, and an interrupted
    one beside them."""
    tmp = tmp_path_factory.mktemp("runs")
    rows = [{**p, "input": f"{p['input']} #{i}"} for i, p in enumerate(PAIRS * 4)]
    data = write_jsonl(tmp / "d.jsonl", rows)
    made = []
    for name, lr in (("slow", 1e-4), ("fast", 5e-3)):
        cfg = tiny_cfg(tiny_llama, data, tmp / "all" / name, method="full", max_steps=6,
                       eval_every=3, batch_size=4, lr=lr, samples=2)  # fmt: skip
        made.append(train(cfg, log=lambda *_: None))
    (tmp / "all" / "broken").mkdir()
    (tmp / "all" / "broken" / "train_config.json").write_text(json.dumps({"task": "summarization"}))
    return tmp, made, data


def test_runs_lists_every_run_under_a_directory(two_runs, capsys):
    tmp, (slow, fast), _ = two_runs
    assert main(["runs", str(tmp / "all")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| run | status | task | model | method | data | steps")
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in lines[2:]}
    assert set(rows) == {str(tmp / "all" / n) for n in ("broken", "fast", "slow")}
    assert rows[str(slow)][1:5] == ["complete", "summarization", rows[str(slow)][3], "full"]
    assert rows[str(slow)][5:7] == ["d.jsonl", "6"]
    [(metric, best)] = json.loads((slow / "manifest.json").read_text())["stats"][
        "best_metric"
    ].items()
    assert rows[str(slow)][8] == f"{metric} {best:.4g} |"
    assert rows[str(tmp / "all" / "broken")][1] == "interrupted"
    assert main(["runs", str(tmp / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_compare_shows_the_differing_settings_metrics_with_intervals_and_samples(
    two_runs, tmp_path
):
    _, (slow, fast), data = two_runs
    out = tmp_path / "cmp"
    args = ["runs", "compare", str(slow), str(fast), "--out", str(out), "--data", str(data)]
    assert main([*args, "--bootstrap", "50", "--no-progress"]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["differing_settings"] == {"lr": [1e-4, 5e-3]}  # nothing else differs
    rouge = next(m for m in result["metrics"]["metrics"] if m["metric"] == "rougeL")
    assert rouge["vs_first"][0] is None
    delta = rouge["vs_first"][1]
    assert delta["difference"] == pytest.approx(rouge["values"][1] - rouge["values"][0], abs=0.01)
    assert delta["ci"][0] <= delta["difference"] <= delta["ci"][1]
    page = (out / "compare.html").read_text()
    assert f"{delta['difference']:+.2f} [{delta['ci'][0]:+.2f}, {delta['ci'][1]:+.2f}]" in page
    lines = result["curves"]  # both runs' curves, drawn on the page's image
    assert [len(lines[n]["loss"]) for n in ("1: slow", "2: fast")] == [6, 6]
    assert [len(lines[n]["val_loss"]) for n in ("1: slow", "2: fast")] == [2, 2]
    samples = result["samples"]
    assert len(samples) == 2 and all(None not in s["outputs"] for s in samples.values())


def test_compare_refuses_what_it_cannot_compare(two_runs, tmp_path, capsys):
    tmp, (slow, _), _ = two_runs
    broken = str(tmp / "all" / "broken")
    assert main(["runs", "compare", str(slow), broken, "--out", str(tmp_path / "x")]) == 2
    assert "an interrupted run" in capsys.readouterr().err
    assert main(["runs", "compare", str(slow), "--out", str(tmp_path / "x")]) == 2
    assert "at least two runs" in capsys.readouterr().err
    assert main(["runs", "compare", str(slow), str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a gentune run directory" in capsys.readouterr().err
    assert main(["runs", "compare", str(slow), str(slow)]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.slow
def test_the_compare_page_renders_both_curves_and_the_settings(two_runs, tmp_path, browser):  # noqa: F811
    _, (slow, fast), _ = two_runs
    assert main(["runs", "compare", str(slow), str(fast), "--out", str(tmp_path / "c")]) == 0
    browser.get((tmp_path / "c" / "compare.html").as_uri())
    image = browser.find_element("id", "curves")
    assert browser.execute_script("return arguments[0].naturalWidth", image) > 500
    settings = browser.find_elements("css selector", "tr.setting")
    assert [r.text.split()[0] for r in settings] == ["lr"]
    headers = browser.find_elements("css selector", "table.runs td")
    assert {"1: slow", "2: fast"} <= {h.text for h in headers}
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_a_run_being_trained_is_running_not_interrupted(two_runs, capsys):
    """A run whose directory a live process holds the lock of (a sweep's current trial)."""
    from gentune.lock import locked

    tmp, (slow, _), _ = two_runs
    broken = tmp / "all" / "broken"
    with locked(broken):
        assert main(["runs", str(tmp / "all")]) == 0
        rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in
                capsys.readouterr().out.splitlines()[2:]}  # fmt: skip
        assert rows[str(broken)][1] == "running"
        assert main(["runs", "compare", str(slow), str(broken), "--out", str(tmp / "c")]) == 2
        assert "still being trained (process" in capsys.readouterr().err
    assert main(["runs", str(tmp / "all")]) == 0
    assert "| interrupted |" in capsys.readouterr().out  # the lock released: interrupted again
