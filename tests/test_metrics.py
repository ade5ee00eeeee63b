"""Metrics against the libraries, corpus perplexity, the seeded bootstrap."""

import math

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from gentune.data.records import Record
from gentune.data.tasks import build_template, get_task
from gentune.inference.load import load_for_inference
from gentune.metrics import bleu, chrf, rouge

PREDS = ["the cat sat on the mat", "a quick brown fox", "hello there"]
REFS = ["the cat is on the mat", "the quick brown fox jumps", "general kenobi"]


def test_rouge_bleu_chrf_equal_the_libraries():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    ours = rouge(PREDS, REFS)
    for key in ("rouge1", "rouge2", "rougeL"):
        want = 100 * sum(scorer.score(r, p)[key].fmeasure for p, r in zip(PREDS, REFS)) / 3
        assert math.isclose(ours[key], want)
    assert bleu(PREDS, REFS) == sacrebleu.corpus_bleu(PREDS, [REFS]).score
    assert chrf(PREDS, REFS) == sacrebleu.corpus_chrf(PREDS, [REFS]).score


def test_perplexity_is_exp_of_total_nll_over_total_tokens(tiny_llama):
    from gentune.inference.evaluate import corpus_perplexity

    loaded = load_for_inference(tiny_llama)
    tpl = build_template(get_task("summarization"), loaded.tokenizer)
    recs = [
        Record(source="d", row=i, input="hello world " * i, output="fox " * (3 * i))
        for i in range(1, 5)
    ]
    ppl, n, left_out = corpus_perplexity(loaded, tpl, recs, batch_size=3)
    assert left_out == []
    from gentune.data.encode import encode_example

    total, count = 0.0, 0
    for r in recs:  # one row at a time, by hand
        [ex] = encode_example(r, tpl, loaded.tokenizer, max_length=256)
        with torch.no_grad():
            logits = loaded.model(torch.tensor([ex.input_ids], device=loaded.model.device)).logits[
                0
            ]
        for pos in range(1, len(ex.input_ids)):
            if ex.labels[pos] != -100:
                total -= torch.log_softmax(logits[pos - 1], -1)[ex.labels[pos]].item()
                count += 1
    assert n == count
    assert math.isclose(ppl, math.exp(total / count), rel_tol=1e-4)


def test_metrics_per_task_against_the_libraries():
    import sacrebleu
    from rouge_score import rouge_scorer

    from gentune.metrics import distinct, text_metrics

    preds = ["the cat sat. it was happy.", "a quick brown fox", "hello there"]
    refs = ["the cat is on the mat. it purrs.", "the quick brown fox jumps", "general kenobi"]
    m = text_metrics(preds, refs)
    assert m["ter"] == sacrebleu.corpus_ter(preds, [refs]).score
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    want = (
        100
        * sum(
            scorer.score(r.replace(". ", ".\n"), p.replace(". ", ".\n"))["rougeLsum"].fmeasure
            for p, r in zip(preds, refs)
        )
        / 3
    )
    assert m["rougeLsum"] == pytest.approx(want)
    assert distinct(["a a b", "a b"], 1) == pytest.approx(100 * 2 / 5)
    assert distinct(["a a b", "a b"], 2) == pytest.approx(100 * 2 / 3)


def test_bootstrap_is_seeded():
    from gentune.metrics import paired_bootstrap

    base = ["a b c", "d e f", "g h i", "x y"]
    tuned = ["a b c", "d e", "g h i j", "x y z"]
    refs = ["a b c d", "d e f", "g h i j", "x y z"]
    a = paired_bootstrap("bleu", base, tuned, refs, samples=100, seed=1)
    b = paired_bootstrap("bleu", base, tuned, refs, samples=100, seed=1)
    assert a == b and a["ci"][0] <= a["ci"][1]
