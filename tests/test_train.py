"""The training loop: gradient accumulation, seeds, the run directory, NaN and memory guards,
early stopping, packing, gradient checkpointing, free text."""

import json

import pytest
import torch
from safetensors.torch import load_file

from gentune import checkpoint
from gentune.config import TrainConfig
from gentune.data.encode import collate, collate_packed, encode_dataset, pack_examples
from gentune.data.tasks import build_template, get_task
from gentune.errors import TrainingError
from gentune.inference.load import load_for_inference
from gentune.models.load import load_model, resolve_precision, wrap_lora
from gentune.models.loss import TargetLoss
from gentune.rundir import read_log
from gentune.training.train import accumulate_gradients, train

from .conftest import PAIRS, _data, _examples, tiny_cfg


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
    assert_accumulation_matches(model, list(exs), tok.pad_token_id)


def assert_accumulation_matches(model, exs, pad: int, *, atol: float | None = 1e-6):
    """The loss and gradients of one batch of 8 rows equal those accumulated over 4
    micro-batches of 2, normalised as training normalises them (by the step's target tokens,
    EOS included). atol=None: 1e-6 of the largest gradient (models with large weights)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    loss_model = TargetLoss(model)
    n_step = sum(int(e.n_targets) for e in exs[:8])

    def grads(micro_batches):
        model.zero_grad()
        nll, n = accumulate_gradients(loss_model, micro_batches, n_step=n_step)
        return nll / n, n, [p.grad.clone() for p in params if p.grad is not None]

    big = grads([collate(exs[:8], pad)])
    small = grads([collate(exs[i : i + 2], pad) for i in range(0, 8, 2)])
    # every trainable parameter got a gradient, and not all of them zero
    assert params and len(big[2]) == len(small[2]) == len(params)
    assert any(float(g.abs().max()) > 0 for g in big[2])
    # the tokens the loss averaged over are the step's target tokens, by the model's own loss
    assert n_step == sum(loss_model(collate(exs[i : i + 2], pad))[1] for i in range(0, 8, 2))
    assert big[0] == pytest.approx(small[0], rel=1e-5)
    if atol is None:  # (float sums in another order)
        atol = 1e-6 * max(float(a.abs().max()) for a in big[2])
    for a, b in zip(big[2], small[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=atol)


def _cfg(model, data, out, **kw):
    base = dict(epochs=2, batch_size=4, micro_batch_size=2, lr=5e-3, val_fraction=0.2)
    return tiny_cfg(model, data, out, **{**base, **kw})


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


def test_micro_batch_token_cap_splits_forward_passes_not_the_gradient(tiny_llama, tmp_path):
    """A cap of 40 padded tokens per forward pass cuts every 4-row micro-batch into pieces;
    every step's loss is the uncapped run's (up to float rounding), and the capped run
    really ran more, smaller forward passes."""
    import gentune.training.train as train_module

    data = _data(tmp_path, 24)
    shapes: dict[str, list] = {"capped": [], "whole": []}
    real = train_module.accumulate_gradients

    def spy(name):
        def accumulate(loss_model, micro, *a, **k):
            shapes[name] += [tuple(m["input_ids"].shape) for m in micro]
            return real(loss_model, micro, *a, **k)

        return accumulate

    runs = {}
    for name, cap in (("capped", 40), ("whole", 10_000)):
        train_module.accumulate_gradients = spy(name)
        try:
            runs[name] = train(
                _cfg(tiny_llama, data, tmp_path / name, micro_batch_size=4, method="full",
                     micro_batch_tokens=cap, eval_generate=0),
                log=lambda *_: None,
            )  # fmt: skip
        finally:
            train_module.accumulate_gradients = real
    assert all(rows * width <= 40 or rows == 1 for rows, width in shapes["capped"])
    assert len(shapes["capped"]) > len(shapes["whole"])
    assert max(rows for rows, _ in shapes["whole"]) == 4
    a, b = (read_log(runs[n]) for n in ("capped", "whole"))
    assert [float(r["loss"]) for r in a] == pytest.approx([float(r["loss"]) for r in b], rel=1e-4)


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
    run = train(
        _cfg(tiny_llama, pairs_file, tmp_path / "run", max_steps=2, method="lora"),
        log=lambda *_: None,
    )
    assert (run / "model" / "adapter_model.safetensors").exists()
    assert not (run / "model" / "model.safetensors").exists()
    loaded = load_for_inference(str(run))
    assert loaded.template.style == "chat"


def test_free_text_trains_with_default_validation(tiny_gpt2, tmp_path):
    """Free text has no references: validation is its loss, and the generation metric is
    skipped instead of crashing on a missing reference (a bug found by running --task text
    with its defaults); a reference metric asked for free text is refused up front."""
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


def test_nan_loss_stops_with_step_and_leaves_last_checkpoint(tiny_llama, tmp_path, monkeypatch):
    from gentune.models.loss import TargetLoss

    calls = {"n": 0}
    real = TargetLoss.forward

    def poisoned(self, batch):
        nll, n = real(self, batch)
        calls["n"] += 1
        if calls["n"] == 2 * 5 - 1:  # the first micro-batch of step 5
            nll = nll * float("nan")
        return nll, n

    monkeypatch.setattr(TargetLoss, "forward", poisoned)
    cfg = tiny_cfg(
        tiny_llama,
        _data(tmp_path),
        tmp_path / "r",
        method="lora",
        batch_size=4,
        micro_batch_size=2,
        max_steps=10,
        save_every=2,
        eval_generate=0,
        eval_every=100,
    )
    with pytest.raises(TrainingError, match=r"loss became nan .* at step 5.*step-00000004"):
        train(cfg, log=lambda *_: None)
    last = checkpoint.latest(tmp_path / "r")
    assert last.name == "step-00000004"
    model, _, _ = load_model(tiny_llama)
    from gentune.models.load import wrap_lora

    model = wrap_lora(model, r=16, alpha=32, dropout=0.05)
    state = checkpoint.load(last, model=model)
    assert state["step"] == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_early_stopping_stops_at_the_expected_step(tiny_llama, tmp_path, monkeypatch):
    import gentune.training.validation as validation_mod

    losses = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8, 2.9])
    monkeypatch.setattr(validation_mod, "evaluate_loss", lambda *a, **k: (v := next(losses), v))
    cfg = tiny_cfg(
        tiny_llama,
        _data(tmp_path),
        tmp_path / "r",
        method="lora",
        batch_size=4,
        max_steps=20,
        eval_every=2,
        patience=2,
        eval_generate=0,
    )
    run = train(cfg, log=lambda *_: None)
    stats = json.loads((run / "manifest.json").read_text())["stats"]
    # validations at steps 2, 4 (best), 6, 8 -> two without improvement: stop at step 8
    assert stats["stopped_early"] and stats["steps"] == 8
    assert stats["best_checkpoint"] == "checkpoints/step-00000004"
    assert stats["model_step"] == 4  # the run's model is the best checkpoint
    assert (run / "checkpoints" / "step-00000004").exists()
    best = checkpoint.saved_weights(run / "checkpoints" / "step-00000004")
    final = load_file(run / "model" / "adapter_model.safetensors")
    for k, v in best.items():
        short = k.replace("base_model.model.", "").replace(".default", "")
        match = [fk for fk in final if fk.replace("base_model.model.", "") == short]
        assert match and torch.equal(final[match[0]], v)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_packed_batch_gives_the_same_per_example_losses(request, fixture):
    from gentune.data.records import Record

    model, tok, _ = load_model(request.getfixturevalue(fixture))
    model.eval()
    tpl = build_template(get_task("summarization"), tok)
    recs = [Record(source="d", row=i, **r) for i, r in enumerate(PAIRS, start=1)]
    exs, _ = encode_dataset(recs, tpl, tok, max_length=128)
    packed = pack_examples(exs, max_length=128)
    assert len(packed) < len(exs)  # several examples share a row

    def per_token_nll(batch):
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch.get("attention_mask"),
                position_ids=batch.get("position_ids"),
                use_cache=False,
            ).logits
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels.clamp(min=0), reduction="none"
        )
        return nll * (labels != -100)

    unpacked = per_token_nll(collate(exs, tok.pad_token_id)).sum(1)
    expected = {e.where: float(v) for e, v in zip(exs, unpacked)}
    nll = per_token_nll(collate_packed(packed, tok.pad_token_id))
    for row, ex in enumerate(packed):
        start = 0
        for where, length in zip(ex.where.split(","), ex.lengths):
            got = float(nll[row, start : start + length - 1].sum())
            assert got == pytest.approx(expected[where], rel=1e-4, abs=1e-4), where
            start += length


def test_packing_trains(tiny_llama, tmp_path):
    cfg = tiny_cfg(
        tiny_llama,
        _data(tmp_path),
        tmp_path / "r",
        batch_size=2,
        max_steps=6,
        packing=True,
        lr=5e-3,
        eval_generate=0,
        max_length=128,
    )
    run = train(cfg, log=lambda *_: None)
    log = read_log(run)
    assert len(log) == 6 and float(log[-1]["loss"]) < float(log[0]["loss"])


def test_run_has_loss_curve_png(tiny_gpt2, tmp_path):
    cfg = tiny_cfg(
        tiny_gpt2,
        _data(tmp_path, 8),
        tmp_path / "r",
        max_steps=3,
        batch_size=2,
        eval_generate=2,
        metric="rougeL",
    )
    run = train(cfg, log=lambda *_: None)
    png = (run / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    log = read_log(run)
    assert log[-1]["val_metric"] != "" and float(log[-1]["peak_memory_mb"]) > 0


def test_out_of_memory_gives_an_actionable_message(tiny_llama, tmp_path, monkeypatch):
    from gentune.models.loss import TargetLoss

    def no_memory(*a, **k):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
            "allocate memory: you tried to allocate 123456789 bytes."
        )

    monkeypatch.setattr(TargetLoss, "forward", no_memory)
    cfg = tiny_cfg(tiny_llama, _data(tmp_path), tmp_path / "r", max_steps=2)
    with pytest.raises(
        TrainingError,
        match=r"out of memory at step 1 .*--micro-batch-size.*"
        r"--gradient-checkpointing",
    ):
        train(cfg, log=lambda *_: None)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_keeps_the_loss_curve(tiny_llama, tmp_path, method):
    curves = []
    for flag in (False, True):
        cfg = tiny_cfg(
            tiny_llama,
            _data(tmp_path),
            tmp_path / f"r{flag}",
            method=method,
            max_steps=4,
            batch_size=4,
            lr=5e-3,
            gradient_checkpointing=flag,
            eval_generate=0,
        )
        curves.append([float(r["loss"]) for r in read_log(train(cfg, log=lambda *_: None))])
    assert curves[0] == pytest.approx(curves[1], rel=1e-5)


def test_the_accumulation_check_fails_when_nothing_gets_a_gradient(tiny_llama):
    """assert_accumulation_matches cannot pass vacuously: a frozen model fails it."""
    model, tok, exs = _examples(tiny_llama)
    for p in model.parameters():
        p.requires_grad_(False)
    model.get_output_embeddings().weight.requires_grad_(True)  # one, so backward runs
    model.get_output_embeddings().weight.register_hook(lambda g: torch.zeros_like(g))
    with pytest.raises(AssertionError):
        assert_accumulation_matches(model, list(exs), tok.pad_token_id)


@pytest.mark.skipif(
    resolve_precision("auto")[0] != "bf16", reason="needs a CPU (or GPU) with native bf16"
)
def test_the_validation_loss_is_computed_in_the_training_forwards_precision(
    tiny_llama, tmp_path, monkeypatch
):
    """A bf16 run's validation forward runs under the same autocast as its training forward
    (not in fp32 at a quarter of the speed): the validation and training losses compare."""
    import gentune.models.loss as loss_mod

    seen, original = [], loss_mod.token_nll

    def spy(model, batch):
        if not torch.is_grad_enabled():  # validation (training's forward records gradients)
            seen.append(torch.is_autocast_enabled("cpu"))
        return original(model, batch)

    monkeypatch.setattr(loss_mod, "token_nll", spy)
    cfg = tiny_cfg(
        tiny_llama, _data(tmp_path), tmp_path / "r", precision="bf16", max_steps=2, eval_every=2
    )
    train(cfg, log=lambda *_: None)
    assert seen and all(seen)
