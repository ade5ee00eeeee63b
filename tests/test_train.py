import json

import pytest
import torch
from safetensors.torch import load_file

from gentune.config import TrainConfig
from gentune.encode import collate, encode_dataset
from gentune.models import load_model, token_nll, wrap_lora
from gentune.runs import load_for_inference, read_log
from gentune.tasks import build_template, get_task
from gentune.train import TargetLoss, accumulate_gradients, train

from .conftest import PAIRS


def _examples(path):
    from gentune.data import Record

    model, tok, _ = load_model(path)
    tpl = build_template(get_task("summarization"), tok)
    recs = [Record(source="d", row=i, **r) for i, r in enumerate(PAIRS[:8], start=1)]
    exs, _ = encode_dataset(recs, tpl, tok, max_length=128)
    return model, tok, exs


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradient_accumulation_equals_one_big_batch(request, fixture, method):
    model, tok, exs = _examples(request.getfixturevalue(fixture))
    assert len({len(e.input_ids) for e in exs}) > 3  # rows of different lengths
    assert len({e.n_targets for e in exs}) > 2
    if method == "lora":
        torch.manual_seed(0)
        model = wrap_lora(model, r=4, alpha=8, dropout=0.0)
        for n, p in model.named_parameters():  # make B non-zero so A gets gradients too
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]

    loss_model = TargetLoss(model)

    def grads(micro_batches):
        model.zero_grad()
        nll, n = accumulate_gradients(loss_model, micro_batches)
        return nll / n, n, [p.grad.clone() for p in params]

    pad = tok.pad_token_id
    big = grads([collate(exs, pad)])
    small = grads([collate(exs[i : i + 2], pad) for i in range(0, 8, 2)])
    assert big[1] == small[1]
    assert big[0] == pytest.approx(small[0], rel=1e-5)
    for a, b in zip(big[2], small[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_selective_logits_equal_full_logits(request, fixture):
    model, tok, exs = _examples(request.getfixturevalue(fixture))
    batch = collate(exs, tok.pad_token_id)
    nll, n = token_nll(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    assert n == int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-4)


def _cfg(model, data, out, **kw):
    base = dict(
        task="summarization",
        data=str(data),
        out=str(out),
        model=model,
        epochs=2,
        batch_size=4,
        micro_batch_size=2,
        lr=5e-3,
        progress=False,
        val_fraction=0.2,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_same_seed_gives_identical_weights(tiny_llama, pairs_file, tmp_path, method):
    runs = [
        train(_cfg(tiny_llama, pairs_file, tmp_path / f"r{i}", method=method), log=lambda *_: None)
        for i in range(2)
    ]
    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a, b = (load_file(r / "model" / name) for r in runs)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    timing = ("elapsed_s", "tokens_per_s", "target_tokens_per_s", "peak_memory_mb")

    def curve(run):
        return [{k: v for k, v in row.items() if k not in timing} for row in read_log(run)]

    assert curve(runs[0]) == curve(runs[1])
    c = train(
        _cfg(tiny_llama, pairs_file, tmp_path / "other", method=method, seed=7), log=lambda *_: None
    )
    other = load_file(c / "model" / name)
    assert any(not torch.equal(a[k], other[k]) for k in a)


def test_run_directory_contents_and_training_lowers_loss(tiny_gpt2, pairs_file, tmp_path):
    run = train(
        _cfg(tiny_gpt2, pairs_file, tmp_path / "run", method="full", epochs=6), log=lambda *_: None
    )
    for name in (
        "model/model.safetensors",
        "model/tokenizer.json",
        "template.json",
        "train_config.json",
        "manifest.json",
        "metrics.csv",
        "heldout.jsonl",
    ):
        assert (run / name).exists(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["seed"] == 42 and manifest["data"][0]["sha256"]
    assert manifest["versions"]["torch"] and manifest["versions"]["transformers"]
    heldout = [json.loads(x) for x in (run / "heldout.jsonl").open()]
    assert len(heldout) == 2 and {"input", "output", "source"} <= set(heldout[0])
    log = read_log(run)
    assert float(log[-1]["loss"]) < float(log[0]["loss"])
    assert {"lr", "grad_norm", "tokens_per_s", "val_loss"} <= set(log[0])
    assert log[-1]["val_perplexity"]
    loaded = load_for_inference(str(run))
    assert loaded.template.style == "plain"


def test_lora_run_saves_only_the_adapter(tiny_llama, pairs_file, tmp_path):
    run = train(_cfg(tiny_llama, pairs_file, tmp_path / "run", max_steps=2), log=lambda *_: None)
    assert (run / "model" / "adapter_model.safetensors").exists()
    assert not (run / "model" / "model.safetensors").exists()
    loaded = load_for_inference(str(run))
    assert loaded.template.style == "chat"


def test_free_text_trains_with_default_validation(tiny_gpt2, tmp_path):
    """Free text has no references: validation is its loss, and the generation metric is
    skipped instead of crashing on a missing reference (a bug found by running --task text
    with its defaults); a reference metric asked for free text is refused up front."""
    from gentune.config import TrainConfig
    from gentune.errors import TrainingError

    text = tmp_path / "s.txt"
    text.write_text(
        "\n\n".join(
            [
                "Once upon a time there was a fox.",
                "The dog slept all day.",
                "A model learns tokens.",
                "Hello world, this is text.",
                "Another paragraph of plain text.",
            ]
        )
        + "\n"
    )
    base = dict(
        task="text", data=str(text), model=tiny_gpt2, max_steps=2, progress=False, tensorboard=False
    )
    run = train(TrainConfig(**base, out=str(tmp_path / "r")), log=lambda *_: None)
    last = read_log(run)[-1]
    assert float(last["val_loss"]) > 0 and last["val_metric"] == ""
    with pytest.raises(TrainingError, match="--metric rougeL compares generations"):
        train(TrainConfig(**base, out=str(tmp_path / "r2"), metric="rougeL"), log=lambda *_: None)
