"""On the real embedded model (SmolLM2-135M-Instruct): slower, marked, and run in CI."""

import json

import pytest

from gentune.config import Decoding, TrainConfig
from gentune.data.encode import encode_prompt
from gentune.data.records import read_records
from gentune.demo import INSTRUCTION, aclsum_files
from gentune.inference.generate import generate
from gentune.inference.load import load_for_inference
from gentune.rundir import read_log
from gentune.training.train import train

pytestmark = pytest.mark.integration


def lora_on_titles(tmp, **settings):
    """(run, data): 12 LoRA steps of a real model on 24 ACLSum abstract -> title rows."""
    train_file, _ = aclsum_files(tmp / "data")
    rows = [json.loads(x) for x in train_file.open()][:24]
    small = tmp / "train.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(
        task="summarization",
        data=str(small),
        out=str(tmp / "run"),
        instruction=INSTRUCTION,
        method="lora",
        max_steps=12,
        batch_size=4,
        max_length=256,
        val_fraction=0.17,
        warmup_ratio=0.0,
        scheduler="constant",
        progress=False,
        **settings,
    )
    return train(cfg, log=lambda *_: None), small


def assert_stops_with_eos(run, data):
    """The trained run's greedy outputs for 8 training inputs end by themselves, short."""
    loaded = load_for_inference(str(run))
    records = read_records(data, kind="pairs")[:8]
    prompts = [
        encode_prompt(r, loaded.template, loaded.tokenizer, max_length=1024)[0] for r in records
    ]
    outs = generate(
        loaded.model, loaded.tokenizer, prompts, Decoding(max_new_tokens=60), batch_size=8
    )
    assert all(o.finished for o in outs), [o.text for o in outs]
    assert all(0 < len(o.text.split()) < 40 for o in outs), [o.text for o in outs]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return lora_on_titles(tmp_path_factory.mktemp("real"))


def test_lora_steps_lower_the_training_loss(lora_run):
    run, _ = lora_run
    losses = [float(r["loss"]) for r in read_log(run)]
    assert len(losses) == 12
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.2, losses
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stats"]["final_val_loss"] < losses[0]


def test_fine_tuned_model_ends_with_eos(lora_run):
    assert_stops_with_eos(*lora_run)


def test_demo_end_to_end_in_small(tmp_path):
    from gentune.demo import demo

    comparison = demo(tmp_path / "demo", max_steps=2, limit=4, progress=False, log=lambda *_: None)
    assert comparison["rows"] == 4 and comparison["metrics"][0]["metric"] == "rougeL"
    for name in (
        "comparison.md",
        "eval/report.html",
        "eval/metrics.json",
        "eval/base/metrics.json",
        "run/model/adapter_model.safetensors",
    ):
        assert (tmp_path / "demo" / name).exists(), name


@pytest.mark.integration
def test_serve_the_embedded_model_answers_as_gentune_generate(capsys):
    """The embedded model behind the OpenAI-compatible API: the chat answer is the CLI's."""
    from fastapi.testclient import TestClient

    from gentune.cli import main
    from gentune.inference.load import load_for_inference
    from gentune.serving.app import create_app

    question = "What is the capital of France?"
    capsys.readouterr()
    assert (
        main(["generate", "smollm2-135m", question, "--task", "dialogue", "--max-new-tokens", "24"])
        == 0
    )
    want = capsys.readouterr().out.strip()
    assert "Paris" in want
    with TestClient(create_app(load_for_inference("smollm2-135m"))) as c:
        r = c.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": question}], "max_tokens": 24},
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == want
        r = c.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 24,
                "stream": True,
            },
        )
        text = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content", "")
            for line in r.text.splitlines()
            if line.startswith("data: {") and '"choices": [{' in line
        )
        assert text == want
