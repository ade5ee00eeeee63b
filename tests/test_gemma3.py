"""The second embedded model, Gemma-3-270M base (`gemma3-270m`): converted from its assembled
GGUF, no chat template (the plain template), LoRA lowers its loss and it learns to stop."""

import json

import pytest

from gentune.config import Decoding, TrainConfig
from gentune.data import read_records
from gentune.demo import INSTRUCTION, aclsum_files
from gentune.encode import encode_prompt
from gentune.generate import generate
from gentune.runs import load_for_inference, read_log
from gentune.train import train

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gemma")
    train_file, _ = aclsum_files(tmp / "data")
    rows = [json.loads(x) for x in train_file.open()][:24]
    small = tmp / "train.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(
        task="summarization",
        data=str(small),
        out=str(tmp / "run"),
        model="gemma3-270m",
        instruction=INSTRUCTION,
        method="lora",
        max_steps=12,
        batch_size=4,
        max_length=256,
        val_fraction=0.17,
        warmup_ratio=0.0,
        scheduler="constant",
        eval_generate=0,
        progress=False,
    )
    return train(cfg, log=lambda *_: None), small


def test_gemma3_loads_with_the_plain_template_and_lora_lowers_its_loss(gemma_run):
    from gentune.models import EMBEDDED, is_converted

    run, _ = gemma_run
    assert "gemma3-270m" in EMBEDDED and is_converted("gemma3-270m")
    assert json.loads((run / "template.json").read_text())["style"] == "plain"
    losses = [float(r["loss"]) for r in read_log(run)]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses


def test_gemma3_stops_with_eos_after_training(gemma_run):
    run, data = gemma_run
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
