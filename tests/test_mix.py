"""Data mixing: several --data files, each drawn at its weight's share of every epoch."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from gentune.config import TrainConfig, parse_spec
from gentune.data.encode import Example, ExampleList
from gentune.data.mix import counts, mix
from gentune.errors import ConfigError

from .conftest import PAIRS, write_jsonl


def test_specs_weights_and_their_errors():
    assert parse_spec("gold.jsonl:3") == ("gold.jsonl", 3.0)
    assert parse_spec("data/pseudo.jsonl:0.5") == ("data/pseudo.jsonl", 0.5)
    assert parse_spec("plain.jsonl") == ("plain.jsonl", 1.0)
    assert parse_spec("odd:name.jsonl") == ("odd:name.jsonl", 1.0)  # not a weight: the path
    with pytest.raises(ConfigError, match="weight after ':' must be a number > 0"):
        parse_spec("gold.jsonl:0")
    with pytest.raises(ConfigError, match="data gold.jsonl:-1"):
        TrainConfig(task="summarization", data=("gold.jsonl:-1", "b.jsonl"), out="o")
    # one file in a list (YAML, or one --data flag) is the plain setting
    assert TrainConfig(task="summarization", data=["a.jsonl"], out="o").data == "a.jsonl"


def _examples(name: str, n: int) -> ExampleList:
    return ExampleList(
        Example([1] * (i % 7 + 2), [1] * (i % 7 + 2), f"{name}:{i}") for i in range(n)
    )


def test_weights_give_the_sampled_proportions_and_the_draw_is_seeded():
    gold, pseudo = _examples("gold", 30), _examples("pseudo", 300)
    drawn, info = mix([gold, pseudo], ["gold", "pseudo"], [3, 1], seed=1)
    assert len(drawn) == 330  # an epoch holds as many examples as the files together
    sources = Counter(e.where.split(":")[0] for e in drawn.take(range(len(drawn))))
    assert sources == {"gold": 248, "pseudo": 82}  # 3:1 of 330 (247.5 rounded up, 82.5 down)
    rows = Counter(e.where for e in drawn.take(range(len(drawn))) if e.where.startswith("gold"))
    assert set(rows.values()) == {8, 9}  # 8 whole passes over gold, then 8 more of its rows
    picked = [e.where for e in drawn.take(range(len(drawn))) if e.where.startswith("pseudo")]
    assert len(set(picked)) == 82  # fewer than the file: no row twice
    # the sizes go with the examples drawn
    assert drawn.lengths.tolist() == [e.size for e in drawn.take(range(len(drawn)))]
    assert [f["drawn"] for f in info.files] == [248, 82]
    same, _ = mix([gold, pseudo], ["gold", "pseudo"], [3, 1], seed=1)
    other, _ = mix([gold, pseudo], ["gold", "pseudo"], [3, 1], seed=2)
    assert np.array_equal(same.picked, drawn.picked)
    assert not np.array_equal(other.picked, drawn.picked)
    assert counts([10, 10, 10], [1, 1, 1]) == [10, 10, 10]
    assert sum(counts([7, 11, 13], [0.3, 2, 1])) == 31


def test_training_mixes_the_files_and_records_the_mix(tiny_llama, tmp_path, capsys):
    from gentune.cli import main
    from gentune.rundir import read_manifest

    gold = write_jsonl(tmp_path / "gold.jsonl", PAIRS)
    pseudo = write_jsonl(
        tmp_path / "pseudo.jsonl",
        [{"input": f"unlabelled input number {i}", "output": f"label {i}."} for i in range(40)],
    )
    out = tmp_path / "run"
    main(
        [
            "train", "--task", "summarization", "--model", tiny_llama,
            "--data", f"{gold}:3", "--data", f"{pseudo}:1", "--out", str(out),
            "--max-steps", "2", "--batch-size", "4", "--eval-generate", "0", "--no-progress",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    err = captured.out + captured.err
    # validation comes off the first file (9 gold rows train), the epoch holds 49 examples
    assert f"mix: {gold} (weight 3): 37 examples per epoch from its 9 (75.5 %" in err
    assert f"mix: {pseudo} (weight 1): 12 examples per epoch from its 40 (24.5 %" in err
    manifest = read_manifest(out)
    assert [f["drawn"] for f in manifest["stats"]["mix"]] == [37, 12]
    assert {d["path"] for d in manifest["data"]} == {str(gold), str(pseudo)}
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["data"] == [f"{gold}:3", f"{pseudo}:1"]
    # a changed second file stops a resume, naming it
    write_jsonl(pseudo, [{"input": "other", "output": "rows."}] * 40)
    again = ["train", "--config", str(out / "train_config.json"), "--resume", "--max-steps", "3"]
    assert main(again) == 2
    captured = capsys.readouterr()
    assert "data:2 file's content differs" in captured.out + captured.err
