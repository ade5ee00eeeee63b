"""Training defaults from the model and the data: what is chosen, why, and that a user's
setting is never changed."""

from __future__ import annotations

import json

from gentune.config import TrainConfig
from gentune.training import recipe

from .conftest import _data


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"task": "summarization", "data": "d.jsonl", "out": "o"} | kw)


def _resolve(
    cfg, *, n_params=135_000_000, n_rows=90, target=100.0, available_mb=16_000.0, refs=True
):
    return recipe.resolve(
        cfg,
        n_params=n_params,
        n_rows=n_rows,
        median_target=target,
        available_mb=available_mb,
        has_references=refs,
    )


def _why(choices, setting: str) -> str:
    """The reason given for a setting's choice."""
    return next(c.reason for c in choices if c.setting == setting)


def test_small_model_gets_full_fine_tuning_big_or_cramped_gets_lora():
    cfg, choices = _resolve(_cfg())
    assert cfg.method == "full" and cfg.lr == recipe.LEARNING_RATE["full"]
    assert "full fine-tuning fits (2.0 GiB" in _why(choices, "method")
    cfg, choices = _resolve(_cfg(), n_params=3_000_000_000)
    assert cfg.method == "lora" and cfg.lr == recipe.LEARNING_RATE["lora"]
    assert "above 1B" in _why(choices, "method")
    cfg, choices = _resolve(_cfg(), available_mb=3000.0)  # 2 GiB of state > half of 2.9 GiB
    assert cfg.method == "lora" and "over half the memory available" in _why(choices, "method")


def test_epochs_follow_the_number_of_rows():
    few, choices = _resolve(_cfg(batch_size=8), n_rows=20)  # 3 steps of 8: 3 passes (10 wanted)
    assert few.epochs == 3.0 and "at least 9 steps (at most 3)" in _why(choices, "epochs")
    some, _ = _resolve(_cfg(batch_size=8), n_rows=60)  # 8 steps: 2 passes
    assert some.epochs == 2.0
    enough, choices = _resolve(_cfg(batch_size=8), n_rows=90)  # 12 steps: one pass
    assert enough.epochs == 1.0 and "one pass is enough" in _why(choices, "epochs")


def test_small_sets_get_smaller_batches_for_more_steps():
    """One pass in batches of 8 under MIN_PASS_STEPS steps: batches of 4 (twice the steps on
    the same tokens); enough rows keep 8; a batch the user gave is kept."""
    small, choices = _resolve(_cfg(), n_rows=90)  # 12 steps of 8 -> 23 of 4
    assert small.batch_size == 4 and small.epochs == 1.0
    assert "23 steps" in _why(choices, "batch_size")
    tiny, _ = _resolve(_cfg(), n_rows=20)  # 5 steps of 4: 2 passes for 10
    assert (tiny.batch_size, tiny.epochs) == (4, 2.0)
    large, choices = _resolve(_cfg(), n_rows=450)
    assert large.batch_size == 8 and "57 steps of 8" in _why(choices, "batch_size")
    assert _resolve(_cfg(), n_rows=160)[0].batch_size == 8  # exactly MIN_PASS_STEPS steps
    assert _resolve(_cfg(), n_rows=152)[0].batch_size == 4  # 19 steps
    given, choices = _resolve(_cfg(batch_size=16), n_rows=90)
    assert given.batch_size == 16 and all(c.setting != "batch_size" for c in choices)
    odd, _ = _resolve(_cfg(micro_batch_size=8), n_rows=90)  # 4 is not a multiple of 8
    assert odd.batch_size == 8


def test_short_targets_keep_batches_of_8():
    """On the dev rows batches of 4 won only where targets were long (summaries, ~100 tokens)
    and tied on titles (~15): a small set of short targets keeps 8, saying why."""
    short, choices = _resolve(_cfg(), n_rows=90, target=15)
    assert short.batch_size == 8 and "under 32" in _why(choices, "batch_size")
    assert _resolve(_cfg(), n_rows=90, target=recipe.LONG_TARGET)[0].batch_size == 4
    assert _resolve(_cfg(), n_rows=90, target=recipe.LONG_TARGET - 1)[0].batch_size == 8


def test_the_task_metric_picks_the_checkpoint_only_when_there_is_a_choice():
    several, _ = _resolve(_cfg(), n_rows=20)  # 2 epochs: 2 validations
    assert several.metric == "rougeL" and several.eval_generate == recipe.EVAL_GENERATE
    assert several.higher_is_better
    one, choices = _resolve(_cfg(), n_rows=90)  # 1 epoch: 1 validation, nothing to choose
    assert one.metric == "val_loss" and one.eval_generate == 0
    assert "a single validation" in _why(choices, "metric")
    translation, _ = _resolve(
        _cfg(task="translation", source_lang="German", target_lang="English"), n_rows=20
    )
    assert translation.metric == "bleu"
    text, choices = _resolve(_cfg(task="text"), n_rows=20, refs=False)
    assert text.metric == "val_loss" and "no references" in _why(choices, "metric")


def test_settings_the_user_gave_are_kept_and_not_reported_as_choices():
    given = _cfg(
        method="lora",
        lr=3e-4,
        epochs=2.0,
        metric="bleu",
        eval_generate=4,
        batch_size=8,
        moments="fp32",
    )
    cfg, choices = _resolve(given, n_params=10_000)
    assert (cfg.method, cfg.lr, cfg.epochs, cfg.metric, cfg.eval_generate) == (
        "lora",
        3e-4,
        2.0,
        "bleu",
        4,
    )
    assert choices == []


def _tiny(model, tmp_path, **kw) -> TrainConfig:
    """Every automatic setting left to decide, on 20 rows (18 after the validation split)."""
    data = str(_data(tmp_path, 20))
    return TrainConfig(
        task="summarization", data=data, out=str(tmp_path / "run"), model=model, batch_size=4, **kw
    )


def test_a_run_with_defaults_records_its_choices_and_resumes_from_its_own_config(
    tiny_llama, tmp_path
):
    from gentune.checkpoint import latest
    from gentune.training.train import train

    lines: list[str] = []
    run = train(_tiny(tiny_llama, tmp_path, progress=False, tensorboard=False), log=lines.append)
    stats = json.loads((run / "manifest.json").read_text())["stats"]
    chosen = {c["setting"]: c["value"] for c in stats["choices"]}
    # 18 rows = 5 steps of 4: 2 epochs; two validations, so ROUGE-L picks the checkpoint
    assert chosen == {
        "method": "full",
        "moments": "bf16",
        "lr": 1e-4,
        "epochs": 2.0,
        "metric": "rougeL",
    }
    assert any(line.startswith("gentune: method full (") for line in lines)
    assert "rougeL" in stats["best_metric"]
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["method"] == "auto" and saved["epochs"] is None  # as given: re-decided alike
    assert (run / "model" / "model.safetensors").exists()
    # the same command with --resume finds the same choices (nothing "changed")
    again = TrainConfig(**{**saved, "resume": str(latest(run))})
    train(again, log=lambda *_: None)


def test_plan_prints_the_choices(tiny_llama, tmp_path):
    from gentune.training.plan import plan

    text = plan(_tiny(tiny_llama, tmp_path), measure=False)
    assert "chosen: method full (" in text
    assert "chosen: epochs 2 (" in text and "chosen: metric rougeL (" in text
    assert "method full" in text.splitlines()[0]


def test_adamw_moments_are_bf16_for_full_fine_tuning_on_a_cpu_and_fp32_elsewhere():
    cfg, choices = _resolve(_cfg())
    assert cfg.moments == "bf16" and "full fine-tuning on a CPU: 515 MiB less" in _why(
        choices, "moments"
    )
    lora, choices = _resolve(_cfg(), n_params=3_000_000_000)
    assert lora.moments == "fp32" and "LoRA" in _why(choices, "moments")
    sharded, choices = _resolve(_cfg(fsdp=True))
    assert sharded.moments == "fp32" and "--fsdp" in _why(choices, "moments")
    gpu, choices = recipe.resolve(
        _cfg(),
        n_params=135_000_000,
        n_rows=90,
        median_target=100.0,
        available_mb=16_000.0,
        has_references=True,
        gpu=True,
    )
    assert gpu.moments == "fp32" and "on a GPU" in _why(choices, "moments")
    given, choices = _resolve(_cfg(moments="fp32"))  # a user's setting is kept, not chosen
    assert given.moments == "fp32" and all(c.setting != "moments" for c in choices)
    bf16, _ = _resolve(_cfg(master_weights="bf16"))
    assert bf16.moments == "bf16"
