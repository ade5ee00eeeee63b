"""The run directory is never mixed or mistaken: an existing run is continued only with
--resume and replaced only with --overwrite; a run is complete only once its last file is
written, and nothing loads an interrupted one."""

import pytest
import torch

from gentune import checkpoint
from gentune.cli import main
from gentune.config import TrainConfig
from gentune.errors import RunError, UsageError
from gentune.inference.load import load_for_inference
from gentune.rundir import run_state
from gentune.training.train import train

from .conftest import PAIRS, tiny_cfg, write_jsonl


def _cfg(model, data, out, **kw) -> TrainConfig:
    base = dict(batch_size=4, eval_generate=0, max_steps=2, save_every=1, keep_last=5)
    return tiny_cfg(model, data, out, **{**base, **kw})


def _quiet(*_):
    pass


def test_existing_run_needs_resume_or_overwrite(tiny_gpt2, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    out = tmp_path / "run"
    train(_cfg(tiny_gpt2, data, out), log=_quiet)
    assert run_state(out) == "complete"
    assert [p.name for p in checkpoint.complete(out)] == ["step-00000001", "step-00000002"]
    with pytest.raises(
        RunError,
        match="already holds a complete run; add --resume to continue it, --overwrite to delete it",
    ):
        train(_cfg(tiny_gpt2, data, out), log=_quiet)
    (out / "stray.txt").write_text("from the old run")
    train(_cfg(tiny_gpt2, data, out, max_steps=1, overwrite=True), log=_quiet)
    assert not (out / "stray.txt").exists()  # the old run is gone, not mixed in
    assert [p.name for p in checkpoint.complete(out)] == ["step-00000001"]
    assert len((out / "metrics.csv").read_text().splitlines()) == 2  # header + one step


def test_a_directory_that_is_no_run_is_never_deleted(tiny_gpt2, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    mine = tmp_path / "my-files"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    for extra in ({}, {"overwrite": True}, {"resume": "latest"}):
        with pytest.raises(RunError, match="not empty and holds no gentune run"):
            train(_cfg(tiny_gpt2, data, mine, **extra), log=_quiet)
    assert (mine / "thesis.tex").read_text() == "precious"


def test_a_continued_run_is_interrupted_until_it_is_complete(tiny_gpt2, tmp_path, monkeypatch):
    """Continuing a finished run marks it unfinished first: a crash mid-way leaves an
    interrupted run that nothing loads (never the older model), then --resume finishes it."""
    import gentune.training.train as train_mod

    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    out = tmp_path / "run"
    train(_cfg(tiny_gpt2, data, out), log=_quiet)
    load_for_inference(str(out))  # complete: loads

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "accumulate_gradients", crash)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_gpt2, data, out, max_steps=4, resume="latest"), log=_quiet)
    assert run_state(out) == "interrupted"
    with pytest.raises(
        RunError,
        match=r"interrupted run \(last checkpoint: step 2\) — continue "
        r"it with `gentune train --config .*train_config.json "
        r"--resume`",
    ):
        load_for_inference(str(out))
    monkeypatch.undo()
    # the command the message gives continues the run
    assert main(["train", "--config", str(out / "train_config.json"), "--resume"]) == 0
    assert run_state(out) == "complete"
    assert checkpoint.latest(out).name == "step-00000004"


def test_incomplete_run_and_long_prompts(tiny_llama, lora_run, tmp_path):
    from gentune.errors import RunError
    from gentune.inference.evaluate import evaluate

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    with pytest.raises(RunError, match="missing keys gentune_run, method, task, base_model"):
        load_for_inference(str(broken))
    data = write_jsonl(
        tmp_path / "long.jsonl",
        [{"input": "word " * 400, "output": "w"}, {"input": "short", "output": "s"}],
    )
    result = evaluate(
        tiny_llama,
        str(data),
        tmp_path / "e",
        task="summarization",
        progress=False,
        decoding_overrides={"max_new_tokens": 4},
    )
    assert result["meta"]["prompts_shortened"] == 1  # context 256: reported and counted


def test_int8_quantization_stores_linear_weights_in_int8_and_still_generates(trained_run):
    from gentune.config import Decoding
    from gentune.data.encode import encode_prompt
    from gentune.data.tasks import prompt_record
    from gentune.inference.generate import generate

    plain = load_for_inference(trained_run)
    quant = load_for_inference(trained_run, quantize="int8")
    weight = quant.model.model.layers[0].mlp.up_proj.weight
    assert type(weight).__name__ != "Parameter" or weight.dtype != torch.float32
    inner = [t for t in vars(weight).values() if isinstance(t, torch.Tensor)]
    assert any(t.dtype == torch.int8 for t in inner), type(weight)
    record = prompt_record(plain.template, PAIRS[0]["input"])
    ids = encode_prompt(record, plain.template, plain.tokenizer, max_length=200)[0]
    decoding = Decoding(max_new_tokens=8)
    a = generate(plain.model, plain.tokenizer, [ids], decoding)[0].text
    b = generate(quant.model, quant.tokenizer, [ids], decoding)[0].text
    assert a == PAIRS[0]["output"] and b  # the trained answer, and int8 still answers


def test_int8_without_torchao_says_how_to_install_it(trained_run, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_torchao(name, *a, **k):
        if name.startswith("torchao"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    with pytest.raises(UsageError, match=r"--quantize int8 needs torchao: pip install torchao"):
        load_for_inference(trained_run, quantize="int8")
