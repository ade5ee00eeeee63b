"""The checks beyond the training rows (slices, perturbations, forgetting, faithfulness,
safety) on tiny models, with planted effects: each assertion fails without the effect."""

import json

from gentune.config import ChecksSettings
from gentune.trust.checks import evaluate_with_checks

from .conftest import PAIRS, tiny_cfg, write_jsonl

HELD = [
    {"input": "Birds sing in the morning before the sun rises.", "output": "Birds sing."},
    {"input": "The river runs to the sea through the valley.", "output": "River to sea."},
    {"input": "She told her brother that the cat sleeps all day.", "output": "Cat sleeps."},
    {"input": "Rain falls on the quiet town all afternoon.", "output": "Rain falls."},
    {"input": "A small boat crosses the lake at dawn with 3 men.", "output": "Boat crosses."},
    {"input": "Children play football in the park after school.", "output": "Kids play."},
]


def _quiet(*_):
    pass


def _train(model, rows, out, **kw):
    from gentune.training.train import train

    data = write_jsonl(out.parent / f"{out.name}.jsonl", rows)
    opts = dict(method="full", max_steps=150, batch_size=4, lr=5e-3, eval_generate=0) | kw
    return train(tiny_cfg(model, data, out, **opts), log=_quiet)


def _checked(run, base, data, out, checks="slices,perturb,forget,faithful,safety", **kw):
    settings = ChecksSettings(checks=checks, general_rows=8, **kw)
    return evaluate_with_checks(
        str(run), str(data), out, compare=str(base), checks=settings, bootstrap=200,
        progress=False, log=_quiet,
    )  # fmt: skip


def test_every_check_runs_end_to_end_and_lands_in_the_report(trained_run, tiny_llama, tmp_path):
    held = write_jsonl(tmp_path / "held.jsonl", HELD + PAIRS[:6])
    result = _checked(trained_run, tiny_llama, held, tmp_path / "e")
    checks = json.loads((tmp_path / "e" / "checks.json").read_text())
    assert set(checks["seconds"]) == {"slices", "perturb", "forget", "faithful", "safety"}
    families = {e["family"] for e in checks["slices"]["table"]}
    assert families == {"input length", "target length", "distance to training"}
    # the PAIRS rows are training rows: they sit in the "near" slice, where the tuned model
    # that memorised them scores far above its base
    near = [e for e in checks["slices"]["table"]
            if e["slice"].startswith("near") and e["metric"] == "rougeL"]  # fmt: skip
    far = [e for e in checks["slices"]["table"]
           if e["slice"].startswith("far") and e["metric"] == "rougeL"]  # fmt: skip
    assert near[0]["difference"] > far[0]["difference"] + 20
    points = checks["slices"]["curve"]["points"]
    assert points[-1]["tuned"] > points[0]["tuned"]  # falls off away from the training rows
    page = (tmp_path / "e" / "report.html").read_text()
    for title in ("Slices", "Perturbed inputs", "Forgetting", "Faithfulness", "Safety"):
        assert title in page
    assert "score by distance to training" in page
    assert result["checks"]["rows"] == len(HELD) + 6
