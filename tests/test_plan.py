"""gentune plan: counts, trained spans, parameters and measured estimates, before training."""

from gentune.config import TrainConfig

from .conftest import PAIRS, write_jsonl


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
