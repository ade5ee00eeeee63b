"""gentune plan: counts, trained spans, parameters and measured estimates, before training."""

import re

from gentune.config import TrainConfig
from gentune.rundir import read_log

from .conftest import PAIRS, tiny_cfg, write_jsonl


def test_plan_shows_counts_spans_parameters_and_estimates(tiny_llama, tmp_path):
    from gentune.training.plan import plan

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
    assert re.search(r"max length 64: .*; [1-9]\d* rows had their input shortened", text)
    assert "targets with no trainable tokens besides EOS: 0" in text
    assert "⟦" in text and "⟧" in text and "### Response" not in text.split("⟦")[1]
    assert "trainable of" in text
    assert "min per epoch" in text and "peak memory" in text
    assert not (tmp_path / "r").exists()  # planning writes nothing


def test_plan_predicts_the_layout_steps_and_forward_passes_training_runs(
    tiny_llama, tmp_path, monkeypatch
):
    """plan's layout, optimizer steps and forward passes per epoch are training's own: rows
    long enough that the default token cap (768 on a CPU) cuts micro-batches of 16."""
    import re

    from gentune.models.loss import TargetLoss
    from gentune.training.memory import default_micro_batch_tokens
    from gentune.training.plan import plan
    from gentune.training.train import train

    rows = [
        {
            "input": " ".join(f"word{i * 7 + j}" for j in range(40 + 9 * (i % 7))),
            "output": "A title.",
        }
        for i in range(30)
    ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = tiny_cfg(
        tiny_llama,
        data,
        tmp_path / "r",
        method="full",
        max_length=256,
        batch_size=32,
        micro_batch_size=16,
        epochs=1,
        eval_every=1000,
    )
    assert default_micro_batch_tokens() == 768  # the CPU default is what is tested
    text = plan(cfg, measure=False)
    passes = int(re.search(r"(\d+) forward passes per epoch", text).group(1))
    steps = int(re.search(r"optimizer steps: (\d+)", text).group(1))
    layout = re.search(r"layout: (.*?) \(the CPU default\)", text).group(1)

    calls = []
    real = TargetLoss.forward
    monkeypatch.setattr(TargetLoss, "forward", lambda self, b: calls.append(1) or real(self, b))
    logged: list[str] = []
    run = train(cfg, log=logged.append)
    trained_steps = int(read_log(run)[-1]["step"])
    assert f"gentune: {layout} (the CPU default)" in logged
    assert trained_steps == steps
    assert len(calls) == passes
    # the cap cut micro-batches: more forward passes than the epoch's micro-batches
    assert passes > steps * 2
