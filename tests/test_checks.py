"""The checks beyond the training rows (slices, perturbations, forgetting, faithfulness,
safety) on tiny models, with planted effects: each assertion fails without the effect."""

import json
import random

import pytest
import torch

from gentune.cli import main
from gentune.config import ChecksSettings
from gentune.errors import ConfigError
from gentune.trust import faithful, forgetting, perturb, safety
from gentune.trust.checks import evaluate_with_checks

from .conftest import PAIRS, tiny_cfg, write_jsonl

HELD = [
    {"input": "Birds sing in the morning before the sun rises.", "output": "Birds sing."},
    {"input": "The river runs to the sea through the valley.", "output": "River to sea."},
    {"input": "She told her brother that the cat sleeps all day.", "output": "Cat sleeps."},
    {"input": "Rain falls on the quiet town all afternoon.", "output": "Rain falls."},
    {"input": "A small boat crosses the lake at dawn with 3 men.", "output": "Boat crosses."},
    {"input": "Children play football in the park after school.", "output": "Kids play."},
]


def _quiet(*_):
    pass


def _train(model, rows, out, **kw):
    from gentune.training.train import train

    data = write_jsonl(out.parent / f"{out.name}.jsonl", rows)
    opts = dict(method="full", max_steps=150, batch_size=4, lr=5e-3, eval_generate=0) | kw
    return train(tiny_cfg(model, data, out, **opts), log=_quiet)


def _checked(run, base, data, out, checks="slices,perturb,forget,faithful,safety", **kw):
    settings = ChecksSettings(checks=checks, general_rows=8, **kw)
    return evaluate_with_checks(
        str(run), str(data), out, compare=str(base), checks=settings, bootstrap=200,
        progress=False, log=_quiet,
    )  # fmt: skip


def test_every_check_runs_end_to_end_and_lands_in_the_report(trained_run, tiny_llama, tmp_path):
    held = write_jsonl(tmp_path / "held.jsonl", HELD + PAIRS[:6])
    result = _checked(trained_run, tiny_llama, held, tmp_path / "e")
    checks = json.loads((tmp_path / "e" / "checks.json").read_text())
    assert set(checks["seconds"]) == {"slices", "perturb", "forget", "faithful", "safety"}
    families = {e["family"] for e in checks["slices"]["table"]}
    assert families == {"input length", "target length", "distance to training"}
    # the PAIRS rows are training rows: they sit in the "near" slice, where the tuned model
    # that memorised them scores far above its base
    near = [e for e in checks["slices"]["table"]
            if e["slice"].startswith("near") and e["metric"] == "rougeL"]  # fmt: skip
    far = [e for e in checks["slices"]["table"]
           if e["slice"].startswith("far") and e["metric"] == "rougeL"]  # fmt: skip
    assert near[0]["difference"] > far[0]["difference"] + 20
    points = checks["slices"]["curve"]["points"]
    assert points[-1]["tuned"] > points[0]["tuned"]  # falls off away from the training rows
    page = (tmp_path / "e" / "report.html").read_text()
    for title in ("Slices", "Perturbed inputs", "Forgetting", "Faithfulness", "Safety"):
        assert title in page
    assert "score by distance to training" in page
    assert result["checks"]["rows"] == len(HELD) + 6


def test_perturbations_are_seeded_and_change_only_what_they_name():
    text = "The  quick brown fox does not jump over the lazy dog, it is 42 years old."
    for name in perturb.PERTURBATIONS:
        a, b = perturb.perturb(name, [text] * 3, seed=7), perturb.perturb(name, [text] * 3, 7)
        assert a == b and a[0] != text  # seeded, and it does change the text
        if name != "case":  # the random ones: another seed, other edits
            assert perturb.perturb(name, [text] * 5, 8) != perturb.perturb(name, [text] * 5, 7)
    assert perturb.perturb("case", [text], 0) == [text.lower()]
    [spaced] = perturb.perturb("spaces", [text], 0)
    assert spaced.split() == text.split() and spaced.replace(" ", "") == text.replace(" ", "")
    typo = perturb.typos(text, random.Random(0), p=1.0)
    assert len(typo.split()) == len(text.split()) and "42" in typo
    changed = [a != b for a, b in zip(typo.split(), text.split()) if len(b.strip(",.")) >= 3]
    assert all(changed[:3])  # every word of 3+ letters got one edit at p = 1
    [mix] = perturb.perturb("mild-mix", [text], 0)
    assert mix == mix.lower() and mix != text.lower()
    assert perturb.contract("It does not work, I am sure") == "It doesn't work, I'm sure"


def test_a_fixed_answer_survives_typos_and_a_memorised_one_does_not(
    trained_run, tiny_llama, tmp_path, monkeypatch
):
    """A model tuned to answer one fixed string gives it under every typo (0 outputs changed,
    drop 0); the run that memorised PAIRS loses its answers when every word is misspelt."""
    monkeypatch.setattr(perturb, "TYPO_P", 1.0)
    fixed = _train(tiny_llama, [{"input": r["input"], "output": "Always this."} for r in PAIRS] * 4,
                   tmp_path / "fixed")  # fmt: skip
    rows = [{"input": r["input"], "output": "Always this."} for r in PAIRS]
    data = write_jsonl(tmp_path / "fixed-eval.jsonl", rows)
    r = _checked(fixed, tiny_llama, data, tmp_path / "f", checks="perturb", perturb="typos")
    [typos] = r["checks"]["perturb"]["table"]
    assert typos["inputs_changed"] == len(rows)
    assert typos["tuned"]["clean"] == 100.0 and typos["tuned"]["perturbed"] == 100.0
    assert typos["tuned"]["outputs_changed"] == 0.0 and typos["tuned"]["drop"] == 0.0
    data = write_jsonl(tmp_path / "mem-eval.jsonl", PAIRS)
    r = _checked(trained_run, tiny_llama, data, tmp_path / "m", checks="perturb", perturb="typos")
    [typos] = r["checks"]["perturb"]["table"]
    assert typos["tuned"]["clean"] > 80 and typos["tuned"]["drop"] > 30
    assert typos["tuned"]["drop_ci"][0] > 0 and typos["tuned"]["outputs_changed"] >= 0.5
    assert typos["drop_tuned_minus_base"]["ci"][0] > 0  # it loses more than the base
    # the references were scored untouched: the clean score is the evaluation's own
    assert typos["tuned"]["clean"] == pytest.approx(r["rougeL"])


def test_hard_tuning_drifts_more_than_light_and_identical_weights_not_at_all(
    trained_run, tiny_llama, tmp_path
):
    from gentune.inference.load import load_for_inference

    light = _train(tiny_llama, PAIRS * 4, tmp_path / "light", max_steps=1, lr=1e-5)
    base = load_for_inference(tiny_llama)
    passages, source = forgetting.general_passages(None, 8, seed=0)
    assert source.startswith("chitchat-dataset") and len(passages) == 8
    opts = dict(batch_size=4, samples=200, seed=0)
    numbers = {}
    for name, spec in (("hard", trained_run), ("light", light)):
        tuned = load_for_inference(str(spec))
        numbers[name] = forgetting.drift(tuned.model, base.model, base.tokenizer, passages, **opts)
        numbers[name]["weights"] = forgetting.weight_change(tuned.model, base.model)
    hard, light_ = numbers["hard"], numbers["light"]
    assert hard["perplexity_tuned"] > 1.5 * light_["perplexity_tuned"]
    assert hard["kl_mean"] > 10 * light_["kl_mean"]
    assert hard["nll_per_token_difference"]["ci"][0] > 0
    assert hard["weights"]["relative_change_mean"] > 10 * light_["weights"]["relative_change_mean"]
    same = forgetting.drift(base.model, base.model, base.tokenizer, passages, **opts)
    assert same["kl_mean"] == pytest.approx(0.0, abs=1e-6)
    assert same["perplexity_tuned"] == pytest.approx(same["perplexity_base"])
    w = forgetting.weight_change(base.model, base.model)
    assert w["changed"] == 0 and w["intruders_total"] == 0 and w["relative_change_mean"] == 0


def test_a_new_dominant_direction_is_an_intruder_and_a_rescaled_one_is_not():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(64, 64))
    v, _ = torch.linalg.qr(torch.randn(48, 48))
    base = q[:, :48] @ torch.diag(torch.linspace(10, 1, 48)) @ v.T  # full rank 48
    assert forgetting.intruders(base * 1.5, base) == 0  # the same directions, rescaled
    assert forgetting.intruders(base + 0.01 * torch.randn(64, 48), base) == 0  # nudged
    u = q[:, 60]  # orthogonal to every left singular direction of base
    tuned = base + 50 * torch.outer(u, v[:, 0])
    assert forgetting.intruders(tuned, base) == 1  # u is now the first direction, and new


def test_faithfulness_counts_invented_numbers_and_extractive_coverage():
    source = "The model was trained on 1200 papers from ACL by Smith and reached 31.5 ROUGE."
    copied = "The model was trained on 1200 papers from ACL"
    row = faithful.row_measures(copied, source)
    assert row["coverage"] == 1.0 and row["novel_1gram"] == 0.0 and row["unsupported_numbers"] == 0
    assert row["density"] == len(faithful.words(copied))  # one fragment: density = its length
    invented = "The model was trained on 5000 papers by Google"
    numbers, spans = faithful.unsupported(invented, source)
    assert numbers == ["5000"] and spans == ["Google"]
    row = faithful.row_measures(invented, source)
    assert row["unsupported_numbers"] == 1 and row["unsupported_spans"] == 1
    assert 0 < row["coverage"] < 1 and row["novel_1gram"] == pytest.approx(2 / 9)
    assert faithful.fragments(["a", "b", "x", "c"], ["c", "a", "b"]) == [["a", "b"], ["c"]]
    result = faithful.faithfulness([source] * 4, [invented] * 4, [copied] * 4,
                                   [copied] * 4, samples=100, seed=0)  # fmt: skip
    t = {e["measure"]: e for e in result["table"]}
    assert t["unsupported_numbers"]["base"] == 1 and t["unsupported_numbers"]["tuned"] == 0
    assert t["coverage"]["references"] == 1.0 and result["examples"] == []


def test_gender_swap_round_trips_and_counts():
    for text in (
        "He gave his book to her, and she thanked Mr. Smith and John.",
        "My mother and her sisters met the King; women and men cheered.",
        "HE said Mary is his daughter.",
    ):
        swapped = safety.swap_gender(text)
        assert swapped != text and safety.swap_gender(swapped) == text
    assert safety.swap_gender("She told her brother.") == "He told his sister."
    assert safety.gender_terms("She told her brother about Mary.") == (3, 1)
    assert not safety.has_gender("The river runs to the sea.")


def test_a_model_tuned_to_swear_raises_the_profanity_rate(tiny_llama, tmp_path):
    rows = [{"input": r["input"], "output": "Damn, " + r["output"]} for r in PAIRS] * 4
    run = _train(tiny_llama, rows, tmp_path / "rude")
    data = write_jsonl(tmp_path / "held.jsonl", HELD)
    r = _checked(run, tiny_llama, data, tmp_path / "e", checks="safety")
    p = r["checks"]["safety"]["profanity"]
    assert p["base"] == 0.0 and p["tuned"] > 0.5 and p["ci"][0] > 0
    assert p["references"] == 0.0 and "damn" in p["words_tuned"]
    cf = r["checks"]["safety"]["counterfactual"]
    assert cf["rows"] == 2  # the two inputs with gendered words, swapped and regenerated


def test_every_check_runs_on_an_encoder_decoder(tmp_path):
    from .seq2seq_models import build_seq2seq

    model = build_seq2seq(tmp_path / "bart", "bart")
    run = _train(str(model), PAIRS * 4, tmp_path / "run", max_steps=20)
    held = write_jsonl(tmp_path / "held.jsonl", HELD)
    r = _checked(run, model, held, tmp_path / "e", general_text=None)
    c = r["checks"]
    assert c["forget"]["passages"] == 8 and c["forget"]["kl_mean"] > 0
    assert c["forget"]["weights"]["changed"] > 0
    assert {e["family"] for e in c["slices"]["table"]} >= {"input length", "distance to training"}
    assert len(c["perturb"]["table"]) == 1 and c["faithful"]["table"]  # typos, the default
    assert c["safety"]["counterfactual"]["rows"] == 2


def test_source_file_slices_for_mixed_rows(trained_run, tiny_llama, tmp_path):
    rows = [dict(h, source=f"{'a' if i % 2 else 'b'}.jsonl:{i}") for i, h in enumerate(HELD)]
    held = write_jsonl(tmp_path / "heldout.jsonl", rows)
    r = _checked(trained_run, tiny_llama, held, tmp_path / "e", checks="slices")
    labels = {e["slice"] for e in r["checks"]["slices"]["table"] if e["family"] == "source file"}
    assert labels == {"a.jsonl", "b.jsonl"}


def test_flags_in_evaluate_and_explain(trained_run, tiny_llama, tmp_path, capsys):
    held = write_jsonl(tmp_path / "held.jsonl", HELD)
    with pytest.raises(ConfigError, match="unknown typo"):
        ChecksSettings(perturb="typo")
    assert main(["evaluate", trained_run, "--data", str(held), "--out", str(tmp_path / "e"),
                 "--compare", tiny_llama, "--checks", "slicez"]) == 2  # fmt: skip
    assert "unknown slicez" in capsys.readouterr().err
    assert main(["evaluate", trained_run, "--data", str(held), "--out", str(tmp_path / "e"),
                 "--compare", tiny_llama, "--checks", "none", "--bootstrap", "50"]) == 0  # fmt: skip
    assert not (tmp_path / "e" / "checks.json").exists()
    assert main(["explain", trained_run, "--data", str(held), "--out", str(tmp_path / "x"),
                 "--checks", "faithful,safety", "--bootstrap", "50", "--general-rows", "4"]) == 0  # fmt: skip
    numbers = json.loads((tmp_path / "x" / "explain.json").read_text())
    assert numbers["checks"]["checks"] == ["faithful", "safety"]
    page = (tmp_path / "x" / "explain.html").read_text()
    assert "Faithfulness proxies" in page and "Safety and bias" in page
    said = capsys.readouterr()
    err = said.out + said.err
    assert "check faithful (" in err and "check safety (" in err


def test_free_text_rows_are_scored_without_checks(tiny_llama, tmp_path):
    """A story run has no generated outputs to check: the evaluation says so and completes."""
    rows = [{"text": r["input"]} for r in PAIRS] * 2
    run = _train(tiny_llama, rows, tmp_path / "story", task="text", max_steps=4)
    data = write_jsonl(tmp_path / "held.jsonl", [{"text": h["input"]} for h in HELD])
    lines: list[str] = []
    settings = ChecksSettings(general_rows=4)
    r = evaluate_with_checks(str(run), str(data), tmp_path / "e", compare=tiny_llama,
                             checks=settings, bootstrap=50, progress=False, log=lines.append)  # fmt: skip
    assert r["perplexity"] > 0 and "checks" not in r
    assert any("free-text rows have none" in x for x in lines)
    assert (tmp_path / "e" / "report.html").exists()
