"""Evaluation measures what training trained: the training length limit at inference, every row
counted, strict JSON, ROUGE for every script, and warnings when validation or test rows are
training rows."""

import json

import pytest

from gentune.config import TrainConfig
from gentune.data.encode import IGNORE, encode_example, encode_prompt
from gentune.data.records import read_records
from gentune.inference.evaluate import evaluate
from gentune.inference.load import load_for_inference
from gentune.metrics import rouge
from gentune.models.load import context_length
from gentune.training.prepare import prepare
from gentune.training.train import train

from .conftest import PAIRS, tiny_cfg, write_jsonl

LONG = "The quick brown fox jumps over the lazy dog near the river bank today. " * 6


def _strict(path):
    def refuse(constant):
        raise AssertionError(f"{path} is not strict JSON: {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_training_length_limit_is_applied_at_inference(tiny_llama, tmp_path):
    """A long input trained shortened is shortened the same way at inference: for a target of
    the median training length, the prompt is token for token the one trained on."""
    rows = [{"input": LONG + f" #{i}", "output": "Fox jumps dog."} for i in range(6)]
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    cfg = tiny_cfg(
        tiny_llama,
        data,
        tmp_path / "run",
        max_length=48,
        max_steps=1,
        batch_size=2,
        eval_generate=0,
    )
    run = train(cfg, log=lambda *_: None)
    saved = json.loads((run / "template.json").read_text())
    loaded = load_for_inference(str(run))
    template, tok = loaded.template, loaded.tokenizer
    assert saved["max_length"] == 48 and template.target_tokens == saved["target_tokens"] > 0
    record = read_records(data, kind="pairs")[0]
    trained = encode_example(record, template, tok, max_length=48)[0]
    context = trained.input_ids[
        : trained.labels.index(next(t for t in trained.labels if t != IGNORE))
    ]
    assert trained.n_targets == template.target_tokens  # a median-length target
    limit = template.prompt_limit(context_length(loaded.model), 128)
    ids, _, shortened = encode_prompt(record, template, tok, max_length=limit)
    assert shortened and ids == context
    # the CLI's evaluate applies the same limit and counts the shortened prompts
    result = evaluate(
        str(run),
        str(data),
        tmp_path / "e",
        progress=False,
        loaded=loaded,
        decoding_overrides={"max_new_tokens": 3},
    )
    assert result["meta"]["prompts_shortened"] == len(rows)


def test_rows_left_out_of_perplexity_are_counted_and_json_is_strict(tiny_llama, tmp_path, capsys):
    too_long = {"input": "a", "output": "word " * 300}  # target past the 256-token context
    data = write_jsonl(tmp_path / "d.jsonl", [PAIRS[0], too_long, PAIRS[1]])
    result = evaluate(
        tiny_llama,
        str(data),
        tmp_path / "e",
        task="summarization",
        progress=False,
        decoding_overrides={"max_new_tokens": 3},
    )
    meta = result["meta"]
    assert meta["perplexity_rows"] == 2 and meta["perplexity_rows_left_out"] == [f"{data}:2"]
    assert "1 of 3 rows left out of perplexity" in capsys.readouterr().err
    _strict(tmp_path / "e" / "metrics.json")
    # every row's target too long: perplexity is undefined, written as null (not NaN)
    only = write_jsonl(tmp_path / "only.jsonl", [too_long])
    result = evaluate(
        tiny_llama,
        str(only),
        tmp_path / "e2",
        task="summarization",
        progress=False,
        decoding_overrides={"max_new_tokens": 3},
    )
    metrics = _strict(tmp_path / "e2" / "metrics.json")
    assert metrics["perplexity"] is None and result["perplexity"] is None


@pytest.mark.parametrize(
    "text",
    [
        "我们提出了一种新的机器翻译方法",
        "مرحبا بالعالم الجميل",
        "🎉🚀 😀",
        "हिन्दी भाषा सुंदर है",
        "สวัสดีครับ",
        "日本語の要約",
        "안녕하세요 세계",
        "Привет, мир",
    ],
)
def test_rouge_keeps_every_script(text):
    scores = rouge([text], [text])
    assert scores["rougeL"] == pytest.approx(100.0) and scores["rouge1"] == pytest.approx(100.0)
    part = text.split()[0] if " " in text else text[: len(text) // 2]  # a word, or characters
    half = rouge([part], [text])["rouge1"]
    assert 0 < half < 100


def test_rouge_of_english_is_rouge_scores():
    from rouge_score import rouge_scorer

    pred, ref = ["The cats were running quickly, weren't they?"], ["A cat runs quick."]
    ours = rouge(pred, ref)
    theirs = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True).score(ref[0], pred[0])
    assert ours["rouge1"] == pytest.approx(100 * theirs["rouge1"].fmeasure)
    assert ours["rougeL"] == pytest.approx(100 * theirs["rougeL"].fmeasure)


def test_validation_that_is_training_data_is_warned(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    lines = []
    base = dict(
        task="summarization",
        data=str(data),
        out=str(tmp_path / "r"),
        model=tiny_llama,
        progress=False,
    )
    prepare(TrainConfig(**base, val=str(data)), log=lines.append)
    assert any("is the training file" in x for x in lines)
    lines.clear()
    val = write_jsonl(tmp_path / "v.jsonl", PAIRS[:3] + [{"input": "new", "output": "row"}])
    prepare(TrainConfig(**base, val=str(val)), log=lines.append)
    warning = next(x for x in lines if "validation rows also occur" in x)
    assert "3 of 4 validation rows" in warning and f"{val}:1" in warning
    lines.clear()
    prepare(TrainConfig(**base), log=lines.append)  # a split of distinct rows: no warning
    assert not any("warning" in x for x in lines)


def test_evaluating_on_the_training_file_is_warned(trained_run, capsys):
    manifest = json.loads((__import__("pathlib").Path(trained_run) / "manifest.json").read_text())
    data = manifest["data"][0]["path"]
    evaluate(
        trained_run,
        data,
        __import__("pathlib").Path(trained_run).parent / "e",
        progress=False,
        limit=2,
        decoding_overrides={"max_new_tokens": 2},
    )
    assert "is the file this run was trained on" in capsys.readouterr().err


def test_new_tokens_capped_from_the_training_targets(lora_run, tiny_llama, tmp_path, capsys):
    """A run records its targets' lengths; generation caps new tokens at 1.5 x their 99th
    percentile (within the task's cap) for the run and for the base it is compared with,
    says so, and --max-new-tokens overrides it."""
    import math

    from gentune.inference.generate import default_decoding

    run, _ = lora_run
    loaded = load_for_inference(str(run))
    tpl = loaded.template
    cap = math.ceil(1.5 * tpl.target_p99)
    assert tpl.target_p99 >= tpl.target_tokens > 0 and cap < 128  # PAIRS' outputs are short
    assert default_decoding(tpl).max_new_tokens == cap
    assert default_decoding(tpl, max_new_tokens=7).max_new_tokens == 7
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS[:4])
    result = evaluate(
        str(run), str(data), tmp_path / "e", progress=False, compare=tiny_llama, bootstrap=10
    )
    assert f"at most {cap} new tokens: 1.5 x the training targets' 99th percentile" in (
        capsys.readouterr().err
    )
    for side in ("e", "e/base"):  # the random base model never stops: it runs to the cap
        rows = [json.loads(x) for x in (tmp_path / side / "predictions.jsonl").open()]
        assert max(r["new_tokens"] for r in rows) <= cap
    assert result["meta"]["decoding"]["max_new_tokens"] == cap
