"""Settings: every recipe loads, overrides apply, every problem is reported at once."""

from pathlib import Path

import pytest

from gentune.config import ConfigError, TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def test_every_recipe_loads():
    recipes = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(recipes) >= 4
    tasks = set()
    for recipe in recipes:
        header = recipe.read_text().splitlines()[0]
        assert header.startswith("# ") and "gentune" in header, recipe
        cfg = TrainConfig.from_sources(str(recipe))
        tasks.add(cfg.task)
        data = ROOT / cfg.data
        if not cfg.data.startswith("runs/"):  # files shipped with the examples
            assert data.exists(), data
    assert tasks == {"summarization", "translation", "dialogue", "text"}


def test_recipe_overrides_and_all_problems_together(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: summarization\ndata: d.jsonl\nout: o\nlr: 0.001\n")
    cfg = TrainConfig.from_sources(str(recipe), {"epochs": 2.0}, ["lr=1e-4", "packing=true"])
    assert cfg.lr == 1e-4 and cfg.epochs == 2.0 and cfg.packing is True
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_sources(str(recipe), {}, ["lr=fast", "epohcs=3", "method=qlora"])
    msg = str(e.value)
    assert "lr='fast'" in msg and "'epohcs'" in msg and "did you mean 'epochs'" in msg
    assert "method='qlora'" in msg


def test_unknown_task_and_all_problems_reported_together():
    with pytest.raises(ConfigError) as e:
        TrainConfig(task="poetry", data="x", out="y", epochs=0, batch_size=8, micro_batch_size=3)
    msg = str(e.value)
    assert "task='poetry'" in msg and "epochs=0" in msg and "micro_batch_size=3" in msg


def test_help_is_built_without_ast():
    """On Python 3.11 `ast.parse` keeps its recursion count in state shared by all threads, so
    `inspect.getsource` of a class failed now and then ("AST constructor recursion depth
    mismatch") when another thread parsed at the same moment; CI hit it building the parser. The
    help text comes from the module's lines instead, so a broken `ast.parse` cannot touch it."""
    import ast

    from gentune import config
    from gentune.cli import build_parser

    config.field_docs.cache_clear()

    def broken(*args, **kwargs):
        raise SystemError("AST constructor recursion depth mismatch")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ast, "parse", broken)
        try:
            build_parser()
            docs = config.field_docs(config.ChecksSettings)
            error = None
        except SystemError as e:
            error = e
    assert error is None
    assert "perturb" in docs and "general_rows" in docs
    assert "try" not in config.field_docs(config.TrainConfig)  # a comment in a method is no field


def test_every_setting_has_its_help_line():
    """Each field's comment is its flag's help, also where the default is wrapped in
    parentheses with the comment on the next line (six training flags had no help before)."""
    from dataclasses import fields

    from gentune import config

    for cls in (
        config.TrainConfig,
        config.Decoding,
        config.ServeSettings,
        config.DistillSettings,
        config.ExplainSettings,
        config.SweepSettings,
        config.ChecksSettings,
    ):
        docs = config.field_docs(cls)
        assert [f.name for f in fields(cls) if not docs.get(f.name)] == [], cls.__name__
    assert config.field_docs(config.TrainConfig)["precision"].startswith("autocast")
