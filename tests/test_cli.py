"""The CLI end to end on tiny models: train, generate, evaluate; greedy and sampled decoding."""

import json

import pytest

from gentune.cli import main

from .conftest import write_jsonl


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_train_generate_evaluate(request, fixture, pairs_file, tmp_path, capsys):
    model = request.getfixturevalue(fixture)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--task",
                "summarization",
                "--data",
                str(pairs_file),
                "--model",
                model,
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["generate", str(run), "hello world", "--max-new-tokens", "5"]) == 0
    inputs = write_jsonl(
        tmp_path / "inputs.jsonl", [{"input": "hello world"}, {"input": "The lazy dog sleeps."}]
    )
    assert (
        main(
            [
                "generate",
                str(run),
                "--data",
                str(inputs),
                "--out",
                str(tmp_path / "p"),
                "--max-new-tokens",
                "5",
                "--no-progress",
            ]
        )
        == 0
    )
    preds = [json.loads(x) for x in (tmp_path / "p" / "predictions.jsonl").open()]
    assert len(preds) == 2 and preds[0]["reference"] is None and "hello world" in preds[0]["prompt"]
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--data",
                str(pairs_file),
                "--out",
                str(tmp_path / "e"),
                "--max-new-tokens",
                "5",
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    for key in ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "perplexity"):
        assert isinstance(metrics[key], float)
        assert key == "perplexity" or 0 <= metrics[key] <= 100
    rows = [json.loads(x) for x in (tmp_path / "e" / "predictions.jsonl").open()]
    assert len(rows) == 10 and all({"prompt", "output", "reference"} <= set(r) for r in rows)
    # the base model, scored with the task's template, on the same file
    assert (
        main(
            [
                "evaluate",
                model,
                "--task",
                "summarization",
                "--data",
                str(pairs_file),
                "--out",
                str(tmp_path / "b"),
                "--max-new-tokens",
                "5",
                "--no-progress",
            ]
        )
        == 0
    )
    base_rows = [json.loads(x) for x in (tmp_path / "b" / "predictions.jsonl").open()]
    assert [r["prompt"] for r in base_rows] == [r["prompt"] for r in rows]


def test_cli_errors_are_clear(tiny_gpt2, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "output": "b"}\n{"input": "a", "outptu": "b"}\n')
    code = main(
        [
            "train",
            "--task",
            "summarization",
            "--data",
            str(bad),
            "--model",
            tiny_gpt2,
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:2: field 'output' is missing" in err
    code = main(["train", "--task", "poetry", "--data", str(bad), "--out", str(tmp_path / "r")])
    assert code == 2 and "choose one of summarization" in capsys.readouterr().err
    code = main(["evaluate", tiny_gpt2, "--data", str(bad), "--out", str(tmp_path / "e")])
    assert code == 2 and "--task" in capsys.readouterr().err


def test_greedy_decoding_for_a_task_that_samples(tiny_gpt2, tmp_path, capsys):
    """`text` samples by default; --greedy (or --no-sample) decodes greedily: the same text on
    every call whatever the seed, as the server's temperature 0 does."""
    outs = set()
    for seed in ("1", "2", "3"):
        capsys.readouterr()
        assert (
            main(
                [
                    "generate",
                    tiny_gpt2,
                    "The quick brown",
                    "--task",
                    "text",
                    "--greedy",
                    "--max-new-tokens",
                    "8",
                    "--seed",
                    seed,
                    "--no-stream",
                ]
            )
            == 0
        )
        outs.add(capsys.readouterr().out)
    assert len(outs) == 1
    sampled = set()
    for seed in ("1", "2", "3"):
        capsys.readouterr()
        assert (
            main(
                [
                    "generate",
                    tiny_gpt2,
                    "The quick brown",
                    "--task",
                    "text",
                    "--max-new-tokens",
                    "8",
                    "--seed",
                    seed,
                    "--no-stream",
                ]
            )
            == 0
        )
        sampled.add(capsys.readouterr().out)
    assert len(sampled) > 1  # without --greedy the task samples
