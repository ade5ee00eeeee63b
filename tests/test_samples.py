"""Samples at every validation: the same seeded validation rows generated at each validation,
in RUN/samples.jsonl, TensorBoard and the report."""

from __future__ import annotations

import json
from pathlib import Path

from gentune.inference.evaluate import generate_outputs
from gentune.training.samples import sample_indices
from gentune.training.train import train

from .conftest import PAIRS, tiny_cfg, write_jsonl


def _samples(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


def test_samples_are_the_same_rows_at_every_validation_and_match_the_final_model(
    tiny_llama, tmp_path
):
    rows = [{**p, "input": f"{p['input']} #{i}"} for i, p in enumerate(PAIRS * 6)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    run = train(
        tiny_cfg(
            tiny_llama,
            data,
            tmp_path / "run",
            method="full",
            max_steps=12,
            eval_every=4,
            batch_size=4,
            lr=5e-3,
            samples=3,
            final_model="last",
            precision="fp32",
        ),  # fmt: skip
        log=lambda *_: None,
    )
    samples = _samples(run)
    assert [s["step"] for s in samples] == [4, 4, 4, 8, 8, 8, 12, 12, 12]
    heldout = [json.loads(line) for line in (run / "heldout.jsonl").read_text().splitlines()]
    chosen = sample_indices(len(heldout), 3, seed=42)
    assert [s["row"] for s in samples] == chosen * 3  # the same rows each time
    for s in samples:
        assert s["input"] == heldout[s["row"]]["input"]
        assert s["reference"] == heldout[s["row"]]["output"]
        assert s["metric"] == "rougeL" and 0 <= s["score"] <= 100
    assert len({s["output"] for s in samples}) > 1  # training changed what it writes
    # the last validation's outputs are what the final model generates for those rows
    predictions = generate_outputs(
        str(run), data=str(run / "heldout.jsonl"), out=str(tmp_path / "gen"), progress=False
    )
    last = {s["row"]: s["output"] for s in samples if s["step"] == 12}
    assert last == {i: predictions[i]["output"] for i in chosen}


def test_each_validations_samples_go_to_tensorboard_as_text(tmp_path):
    """(TensorBoard is optional: a stand-in writer records what the run log sends it.)"""
    from gentune.training.train import RunLog

    class Writer:
        texts: list = []

        def add_text(self, tag, text, step):
            self.texts.append((tag, text, step))

        def close(self):
            pass

    log = RunLog(tmp_path, [], enabled=True, tensorboard=False)
    log.tb = Writer()
    old = {"step": 4, "row": 1, "output": "old", "reference": "ref"}
    new = {"step": 8, "row": 1, "output": "new <b>", "reference": "ref"}
    log.samples([old, new], 8)
    log.close()
    assert Writer.texts == [("samples/row 1", "**output:** new <b>\n\n**reference:** ref", 8)]
    assert _samples(tmp_path) == [old, new]


def test_samples_can_be_turned_off_and_the_report_shows_how_outputs_changed(
    trained_run, tiny_llama, tmp_path
):
    from gentune.inference.evaluate import evaluate

    samples = _samples(Path(trained_run))
    steps = sorted({s["step"] for s in samples})
    assert len(steps) >= 2
    data = write_jsonl(tmp_path / "t.jsonl", PAIRS)
    evaluate(trained_run, str(data), out=str(tmp_path / "ev"), compare=tiny_llama, progress=False)
    page = (tmp_path / "ev" / "report.html").read_text()
    assert "How the outputs changed during training" in page
    first = samples[0]
    assert f"<h3>row {first['row']}</h3>" in page
    assert page.count("<table class='changes'>") == len({s["row"] for s in samples})

    rows = write_jsonl(tmp_path / "d.jsonl", PAIRS * 3)
    off = train(
        tiny_cfg(tiny_llama, rows, tmp_path / "off", max_steps=2, samples=0),
        log=lambda *_: None,
    )
    assert not (off / "samples.jsonl").exists()
