"""Precision from the hardware: --precision auto reads the CPU flags (or the GPU), says why,
and records the choice; the run is exact-resumable within a precision."""

import json

import pytest
import torch

import gentune.models.load as models_mod
import gentune.training.train as train_mod
from gentune.models.load import resolve_precision
from gentune.training.train import train

from .conftest import PAIRS, tiny_cfg, write_jsonl


@pytest.mark.parametrize(
    "flag,expected", [("avx512_bf16", "bf16"), ("amx_bf16", "bf16"), (None, "fp32")]
)
def test_auto_follows_the_cpu_flags(monkeypatch, flag, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models_mod, "cpu_bf16", lambda: flag)
    precision, reason = resolve_precision("auto")
    assert precision == expected
    assert (flag or "no native bf16") in reason
    assert resolve_precision("fp32") == ("fp32", "--precision fp32")


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    from pathlib import Path

    real = Path.read_text

    def fake(self, *a, **k):
        if str(self) == "/proc/cpuinfo":
            return "flags\t: fpu sse2 avx512f avx512_bf16 amx_tile\n"
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", fake)
    assert models_mod.cpu_bf16() == "avx512_bf16"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_recorded_and_applied(tiny_llama, tmp_path, precision, monkeypatch):
    """The manifest records the precision and its reason; bf16 autocast really runs the
    training forward in bf16 (a linear layer's output, seen by a hook), and the validation
    loss in the same precision (under the same autocast)."""
    seen = []

    def hook(module, args, output):
        seen.append(output.dtype)

    from gentune.models.load import load_model

    def load_and_hook(spec, **kw):
        model, tok, where = load_model(spec, **kw)
        model.model.layers[0].mlp.down_proj.register_forward_hook(hook)
        return model, tok, where

    monkeypatch.setitem(train_mod.prepare.__globals__, "load_model", load_and_hook)
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    cfg = tiny_cfg(
        tiny_llama,
        data,
        tmp_path / precision,
        max_steps=2,
        batch_size=4,
        precision=precision,
        eval_generate=0,
        samples=0,  # (samples are greedy fp32 generations, as `generate` decodes)
    )
    run = train(cfg, log=lambda *_: None)
    stats = json.loads((run / "manifest.json").read_text())["stats"]
    assert (
        stats["precision"] == precision and stats["precision_reason"] == f"--precision {precision}"
    )
    # two training steps, one forward each, then validation at the end: the same precision
    assert len(seen) > 2
    assert set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}


def test_bf16_weights_for_generation_on_request(trained_run, tmp_path, capsys):
    """--precision bf16 loads the weights in bf16 for generation and evaluation (the default
    stays fp32): the tiny trained run still gives its answer."""
    import gentune.inference.load as runs_mod
    from gentune.cli import main

    half = runs_mod.load_for_inference(trained_run, precision="bf16")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    full = runs_mod.load_for_inference(trained_run)
    assert {p.dtype for p in full.model.parameters()} == {torch.float32}
    capsys.readouterr()
    assert main(["generate", trained_run, PAIRS[0]["input"], "--precision", "bf16"]) == 0
    assert capsys.readouterr().out.strip() == PAIRS[0]["output"]
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS[:3])
    out = tmp_path / "e"
    assert (
        main(
            [
                "evaluate",
                trained_run,
                "--data",
                str(data),
                "--out",
                str(out),
                "--precision",
                "bf16",
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rougeL"] > 50 and metrics["perplexity"] > 0
