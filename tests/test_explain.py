"""gentune explain: per-token comparison of a run with its base, and memorisation — on tiny
models with planted effects (each check fails without the effect it looks for)."""

import json
import math
from pathlib import Path

import numpy as np
import torch

from gentune.cli import main
from gentune.config import ExplainSettings
from gentune.trust.compare import shift_class, token_stats
from gentune.trust.explain import explain
from gentune.trust.memorisation import auc

from .conftest import PAIRS, tiny_cfg, write_jsonl

HELD = [  # rows no run here was trained on
    {"input": "Birds sing in the morning before the sun rises.", "output": "Birds sing."},
    {"input": "The river runs to the sea through the valley.", "output": "River to sea."},
    {"input": "Cats sleep most of the day and hunt at night.", "output": "Cats hunt."},
    {"input": "Rain falls on the quiet town all afternoon.", "output": "Rain falls."},
    {"input": "A small boat crosses the lake at dawn.", "output": "Boat crosses."},
    {"input": "Children play football in the park after school.", "output": "Kids play."},
]


def _quiet(*_):
    pass


def _explain(run, data, out, **kw):
    return explain(ExplainSettings(run=str(run), data=str(data), out=str(out), **kw), log=_quiet)


def test_rank_kl_and_entropy_match_a_hand_computation():
    tuned = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    base = torch.tensor([[0.0, 1.0, 3.0, 2.0], [1.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([0, 0])
    s = token_stats(tuned, base, targets)
    pt, pb = torch.softmax(tuned, -1), torch.softmax(base, -1)
    # token 0 is the base's 4th choice at position 0 (shifted), its first at position 1
    assert s["base_rank"].tolist() == [4, 1]
    assert [shift_class(int(r)) for r in s["base_rank"]] == ["shifted", "unshifted"]
    assert shift_class(2) == shift_class(3) == "marginal"
    kl = [float((pt[i] * (pt[i].log() - pb[i].log())).sum()) for i in range(2)]
    torch.testing.assert_close(s["kl"], torch.tensor(kl))
    torch.testing.assert_close(s["entropy_base"], -(pb * pb.log()).sum(-1))
    torch.testing.assert_close(s["logp_tuned"] - s["logp_base"], (pt[:, 0] / pb[:, 0]).log())
    assert s["top_base"][0][0].tolist()[:2] == [2, 3]


def test_auc_is_half_for_ties_and_one_for_a_perfect_split():
    assert auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0]), np.array([2.0])) == 0.0


def test_a_model_against_itself_changes_nothing(trained_run, tmp_path):
    held = write_jsonl(tmp_path / "held.jsonl", HELD)
    r = _explain(trained_run, held, tmp_path / "x", base=trained_run, bootstrap=200)
    t = r["tokens"]
    assert t["positions"] > 10 and t["shifted"] == 0 and t["marginal"] == 0
    assert abs(t["delta_logprob_mean"]) < 1e-5 and t["kl_mean"] < 1e-5
    assert abs(r["reference"]["delta_logprob_mean"]) < 1e-5
    m = r["memorisation"]
    assert m["membership"]["auc"] == 0.5  # every score is 0: no signal at all


def test_bf16_weights_against_themselves_change_nothing(trained_run, tmp_path):
    held = write_jsonl(tmp_path / "held.jsonl", HELD[:3])
    r = _explain(trained_run, held, tmp_path / "x", base=trained_run, precision="bf16",
                 bootstrap=50)  # fmt: skip
    assert r["precision"] == "bf16" and r["tokens"]["positions"] > 0
    assert r["tokens"]["shifted"] == 0 and r["tokens"]["kl_mean"] < 1e-4


def test_a_model_that_memorised_its_rows_is_flagged(trained_run, tmp_path):
    """trained_run: 300 full steps on 9 rows. Its training rows come back word for word, the
    held-out ones do not, and the membership score splits them."""
    held = write_jsonl(tmp_path / "held.jsonl", HELD)
    r = _explain(trained_run, held, tmp_path / "x", bootstrap=200)
    m = r["memorisation"]
    assert m["exact_match"]["train"] >= 0.8 and m["exact_match"]["heldout"] <= 0.2
    assert m["exact_match"]["ci"][0] > 0.4  # the gap's interval is well above 0
    assert m["membership"]["auc"] > 0.9 and m["membership"]["ci"][0] > 0.7
    assert m["extraction"]["share_above"] >= 0.8  # p(target) > 0.1 for most training rows
    held_out = len((Path(trained_run) / "heldout.jsonl").read_text().splitlines())
    assert held_out and m["train_rows"] == len(PAIRS) * 4 - held_out
    assert m["heldout_in_training"] == 0
    assert r["tokens"]["shifted"] > 0.3  # a tiny random base disagrees with it everywhere


def test_a_fixed_first_word_is_the_shifted_position_and_the_top_gain(trained_run, tmp_path):
    """A model that already writes the short answers (trained_run, exported) is fine-tuned to
    begin every answer with "Indeed": its first position is shifted on every row, and
    "Indeed"'s first token is what it gained most."""
    from gentune.inference.export import export
    from gentune.training.train import train

    base, _ = export(trained_run, tmp_path / "base")
    rows = [{"input": r["input"], "output": "Indeed " + r["output"]} for r in PAIRS] * 4
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    # (fp32 moments, as trained_run's: which piece of "Indeed" gains most hangs on the exact
    # weights at this tiny model's lr 5e-3; with bf16 moments it was its last piece, "d")
    cfg = tiny_cfg(str(base), data, tmp_path / "run", method="full", max_steps=150, lr=5e-3,
                   batch_size=4, eval_generate=0, moments="fp32")  # fmt: skip
    run = train(cfg, log=_quiet)
    held = write_jsonl(tmp_path / "held.jsonl", HELD)
    r = _explain(run, held, tmp_path / "x", bootstrap=100)
    first = r["tokens"]["by_position"][0]
    assert first["position"] == 0 and first["rows"] == len(HELD) and first["shifted"] == 1.0
    top = r["tokens"]["gained"][0]
    assert top["token"].strip() and "Indeed".startswith(top["token"].strip())
    # every output begins with that token, the first piece of "Indeed"
    assert {row["tokens"][0]["text"] for row in r["rows_detail"]} == {top["token"]}
    assert top["count"] >= len(HELD)


def test_training_rows_are_the_runs_own_less_its_validation_rows(tiny_llama, tmp_path):
    """A run with a --val file: memorisation reads its --data rows only (the manifest names
    each file's role), and a changed training file is said, not used."""
    from gentune.training.train import train

    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    val = write_jsonl(tmp_path / "v.jsonl", HELD[:2])
    cfg = tiny_cfg(tiny_llama, data, tmp_path / "run", val=str(val), max_steps=2, batch_size=4)
    run = train(cfg, log=_quiet)
    roles = [d["role"] for d in json.loads((run / "manifest.json").read_text())["data"]]
    assert roles == ["data", "val"]
    held = write_jsonl(tmp_path / "held.jsonl", HELD)
    r = _explain(run, held, tmp_path / "x", bootstrap=50)
    assert r["memorisation"]["train_rows"] == len(PAIRS)
    assert r["memorisation"]["heldout_in_training"] == 0
    write_jsonl(data, PAIRS[:3])  # the training file changed since
    lines: list[str] = []
    r = explain(ExplainSettings(run=str(run), data=str(held), out=str(tmp_path / "y")),
                log=lines.append)  # fmt: skip
    assert r["memorisation"] is None and any("missing or changed" in x for x in lines)


def test_page_json_and_the_link_from_the_run(trained_run, tmp_path):
    held = write_jsonl(tmp_path / "held.jsonl", HELD)
    out = tmp_path / "x"
    assert main(["explain", trained_run, "--data", str(held), "--out", str(out),
                 "--limit", "3", "--bootstrap", "50", "--attribution"]) == 0  # fmt: skip
    numbers = json.loads((out / "explain.json").read_text())
    page = (out / "explain.html").read_text()
    assert (out / "shift_by_position.png").exists()
    assert page.count("class='tok ") == sum(len(r["tokens"]) for r in numbers["rows_detail"])
    assert "data-info=" in page and "top_base" in page and "Memorisation" in page
    att = numbers["rows_detail"][0]["attribution"]
    assert len(att["tuned"]) == len(numbers["rows_detail"][0]["input"])
    assert math.isclose(sum(att["tuned"]), 1.0, rel_tol=1e-4) and att["tuned"] != att["base"]
    assert numbers["attribution"]["seconds"] >= 0 and "Attribution (gradient" in page
    assert 0 <= numbers["attribution"]["copied_share_tuned"] <= 1
    assert str((out / "explain.html").resolve()) in json.loads(
        (Path(trained_run) / "explanations.json").read_text()
    )
    # the run's report links to the page
    from gentune.inference.evaluate import evaluate

    base = json.loads((Path(trained_run) / "manifest.json").read_text())["base_model"]
    evaluate(trained_run, str(held), tmp_path / "e", compare=base, limit=2, bootstrap=20,
             progress=False, decoding_overrides={"max_new_tokens": 4})  # fmt: skip
    report = (tmp_path / "e" / "report.html").read_text()
    assert "href='../x/explain.html'" in report


def test_rows_without_references_and_long_rows_are_said(trained_run, tmp_path, capsys):
    inputs = [{"input": "word " * 400}, {"input": "A short one."}]
    data = write_jsonl(tmp_path / "inputs.jsonl", inputs)
    r = _explain(trained_run, data, tmp_path / "x", bootstrap=50)
    assert r["reference"] is None and r["memorisation"] is None
    assert r["prompts_shortened"] == 1  # by the run's rule, counted
    assert "no row has a reference" in capsys.readouterr().err


def test_bad_invocations_are_one_line(trained_run, tmp_path, capsys):
    held = write_jsonl(tmp_path / "held.jsonl", HELD)
    cases = [
        (["explain", trained_run, "--data", str(held), "--out", str(tmp_path / "a"),
          "--base", str(tmp_path / "no-such-model")], "no such directory"),
        (["explain", str(tmp_path), "--data", str(held), "--out", str(tmp_path / "b")],
         "not a gentune run"),
        (["explain", trained_run, "--data", str(held), "--out", str(tmp_path / "d"),
          "--base", "nosuch-org/nosuch-model"], "not cached here"),
        (["explain", trained_run, "--data", str(held), "--out", str(tmp_path / "c"),
          "--limit", "0"], "limit=0: must be > 0"),
    ]  # fmt: skip
    for argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err and expected in err[-1] and err[-1].startswith("gentune explain: error:")


def test_an_encoder_decoder_run_is_explained(tmp_path_factory, tmp_path):
    from gentune.training.train import train

    from .seq2seq_models import build_seq2seq

    model = str(build_seq2seq(tmp_path_factory.mktemp("bart"), "bart"))
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS * 3)
    cfg = tiny_cfg(model, data, tmp_path / "run", method="lora", lr=1e-2, batch_size=4,
                   max_steps=12, val_fraction=0.2)  # fmt: skip
    run = train(cfg, log=_quiet)
    held = write_jsonl(tmp_path / "held.jsonl", HELD)
    same = _explain(run, held, tmp_path / "same", base=str(run), bootstrap=50)
    assert same["tokens"]["positions"] > 0 and same["tokens"]["shifted"] == 0
    assert same["tokens"]["kl_mean"] < 1e-5
    r = _explain(run, held, tmp_path / "x", bootstrap=50, attribution=True)
    assert r["tokens"]["kl_mean"] > 0 and r["memorisation"] is not None
    assert len(r["rows_detail"][0]["attribution"]["tuned"]) == len(r["rows_detail"][0]["input"])
