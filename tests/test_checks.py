"""Data checks in `gentune plan`: leakage, duplicates, copied targets, secrets and personal data."""

from __future__ import annotations

from gentune.data.checks import check
from gentune.data.records import Record

from .conftest import write_jsonl

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
    "sigma tau upsilon phi chi psi omega"
).split()


def _text(i: int, n: int = 30) -> str:
    """A sentence of n words that no other i shares (word order from i)."""
    return " ".join(f"{WORDS[(i * 7 + k * (i % 5 + 1)) % len(WORDS)]}{i}x{k % 3}" for k in range(n))


def _rec(src: str, row: int, input: str, output: str = "a summary.") -> Record:
    return Record(source=src, row=row, input=input, output=output)


def test_leakage_finds_planted_duplicates_and_near_duplicates_and_nothing_else():
    train = [_rec("train", i + 1, _text(i)) for i in range(200)]
    words = _text(7).split()
    near = " ".join(words[:-2] + ["changed", "words"])  # 2 of 30 words differ: Jaccard ~0.8+
    far = " ".join(words[:12] + _text(500).split()[12:])  # shares a third: not a duplicate
    test = [
        _rec("test", 1, _text(3).upper() + " !"),  # exact, up to case and punctuation
        _rec("test", 2, near),
        _rec("test", 3, far),
        _rec("test", 4, _text(900)),
    ]
    report = check(train, [("test", test)])
    exact, close = report.leaks
    assert (exact.count, exact.examples) == (1, ["test:1 = train:4"])
    assert (close.count, close.examples) == (1, ["test:2 ~ train:8 (0.92)"])
    assert report.leaked == 2


def test_duplicates_copies_and_sensitive_data_are_counted_with_their_rows():
    train = [
        _rec("t", 1, "The model reads the input.", "It reads."),
        _rec("t", 2, "the model reads the INPUT", "it reads"),  # a duplicate of row 1
        _rec("t", 3, "Copy me exactly, please now.", "copy me exactly please now"),
        _rec("t", 4, "Write to jane.doe@example.org today.", "Mail."),
        _rec("t", 5, "my key is sk-abcdefghijklmnopqrstuvwxyz123456", "Key."),
        _rec("t", 6, "Call +49 30 1234567 or (555) 123-4567.", "Phone."),
        _rec("t", 7, "Results for 2019 2020 2021 on 1,000 rows (v 2.3.4).", "Years."),
    ]
    report = check(train, [])
    found = {f.what: f for f in report.others}
    assert found["duplicate training rows (same input and target)"].examples == ["t:2 = t:1"]
    copies = found["training rows whose target copies the input (Jaccard >= 0.9)"]
    assert copies.examples == ["t:3"]
    assert found["training rows with a likely e-mail address"].examples == ["t:4 (jane…)"]
    assert found["training rows with a likely API key or token"].examples == ["t:5 (sk-a…)"]
    assert found["training rows with a likely phone number"].examples == ["t:6 (+49 …)"]
    assert sum(f.count for f in report.others) == 5  # row 7 (years, numbers) is clean


def test_plan_reports_the_checks_and_fail_on_leak_stops(tiny_llama, tmp_path, capsys):
    from gentune.cli import main

    rows = [{"input": _text(i), "output": f"summary {i}."} for i in range(30)]
    rows.append(dict(rows[5]))  # a duplicate row
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", [rows[2], {"input": _text(77), "output": "x."}])
    args = ["plan", "--task", "summarization", "--model", tiny_llama, "--data", str(data)]
    args += ["--val", str(test), "--out", str(tmp_path / "run"), "--method", "full"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "data checks:" in out
    assert f"validation rows whose input is also a training input (exact): 1: {test}:1 = " in out
    assert f"duplicate training rows (same input and target): 1: {data}:31 = {data}:6" in out
    assert main([*args, "--test", str(test), "--fail-on-leak"]) == 2
    err = capsys.readouterr().err
    assert "--fail-on-leak: 2 validation or test rows are (nearly) training rows" in err
