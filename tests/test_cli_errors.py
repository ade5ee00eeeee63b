"""The CLI's error policy: every subcommand's --help works; every user mistake ends with one
line `gentune <command>: error: …` and exit code 2, never a traceback; a bug shows its traceback
and asks for a report."""

import argparse
import bz2
import gzip
import json
import shutil
from pathlib import Path

import pytest

from gentune.cli import build_parser, main

from .conftest import PAIRS, write_jsonl


def _subcommands() -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_help_works(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gentune {command}") and "--help" in out


def test_top_level_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in _subcommands())


@pytest.fixture(scope="module")
def copied_run(trained_run, tmp_path_factory):
    """A fresh copy of a finished tiny run, for each damage."""
    root = tmp_path_factory.mktemp("copies")
    counter = iter(range(1000))

    def copy() -> Path:
        dst = root / f"run{next(counter)}"
        shutil.copytree(trained_run, dst)
        return dst

    return copy


def _damaged(kind: str, copy) -> Path:
    run = copy()
    if kind == "truncated-weights":
        f = next((run / "model").glob("*.safetensors"))
        f.write_bytes(f.read_bytes()[:100])
    elif kind == "template-unknown-key":
        t = json.loads((run / "template.json").read_text())
        (run / "template.json").write_text(json.dumps({**t, "colour": "blue"}))
    elif kind == "template-missing-key":
        t = json.loads((run / "template.json").read_text())
        del t["eos_token"]
        (run / "template.json").write_text(json.dumps(t))
    elif kind == "manifest-missing-key":
        m = json.loads((run / "manifest.json").read_text())
        del m["method"]
        (run / "manifest.json").write_text(json.dumps(m))
    elif kind == "manifest-not-json":
        (run / "manifest.json").write_text("{not json")
    elif kind == "no-tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (run / "model" / name).unlink()
    elif kind == "interrupted":
        (run / "manifest.json").unlink()
    return run


def _cases(tmp: Path, model: str, pairs: Path, copy) -> list[tuple[list[str], str]]:
    """(argv, what the one error line must say)."""
    train = ["train", "--task", "summarization", "--model", model, "--no-progress"]
    bad_rows = tmp / "bad.jsonl"
    bad_rows.write_text('{"input": "a"}\n{"input": "b"}\n')
    broken_gz = tmp / "broken.jsonl.gz"
    broken_gz.write_bytes(b"\x1f\x8bnot really gzip")
    a_file = tmp / "a_file.txt"
    a_file.write_text("x")
    existing = copy()
    unlabelled = write_jsonl(tmp / "inputs.jsonl", [{"input": "hello"}])
    return [
        (["train", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (
            [*train, "--data", str(tmp / "missing.jsonl"), "--out", str(tmp / "o1")],
            "missing.jsonl: no such file",
        ),
        ([*train, "--data", str(tmp), "--out", str(tmp / "o2")], "is a directory"),
        ([*train, "--data", str(broken_gz), "--out", str(tmp / "o3")], "cannot decompress"),
        ([*train, "--data", str(pairs), "--out", str(a_file)], "is a file"),
        (
            [*train, "--data", str(bad_rows), "--skip-invalid", "--out", str(tmp / "o4")],
            "no valid rows (2 skipped",
        ),
        (
            [
                *train,
                "--data",
                str(pairs),
                "--out",
                str(tmp / "o5"),
                "--resume",
                str(tmp / "nowhere"),
            ],
            "not a complete checkpoint",
        ),
        (
            [*train, "--data", str(pairs), "--out", str(tmp / "o6"), "--lr", "fast"],
            "lr='fast': must be float",
        ),
        (["train", "--config", str(tmp / "none.yaml")], "no such recipe file"),
        (
            [*train, "--data", str(pairs), "--out", str(existing)],
            "already holds a complete run; add --resume",
        ),
        (
            [*train, "--data", str(pairs), "--out", str(tmp / "o7"), "--resume", "--overwrite"],
            "resume and overwrite: choose one",
        ),
        (
            [*train, "--data", str(pairs), "--out", str(tmp / "o8"), "--model", str(existing)],
            "is a gentune run, not a model directory",
        ),
        (
            ["train", "--task", "translation", "--data", str(pairs), "--out", str(tmp / "o9")],
            "needs source_lang and target_lang",
        ),
        (
            ["plan", "--task", "summarization", "--data", str(tmp / "missing.jsonl")],
            "out: required",
        ),
        (["generate", str(existing)], "give either a prompt or --data FILE"),
        (["generate", str(existing), "--data", str(unlabelled)], "--data needs --out"),
        (["generate", str(existing), "x", "--batch-size", "0"], "0 must be > 0"),
        (
            ["generate", str(existing), "x", "--instruction", "Translate."],
            "--instruction would change it",
        ),
        (
            [
                "evaluate",
                str(existing),
                "--data",
                str(pairs),
                "--out",
                str(tmp / "e"),
                "--system",
                "Be brief.",
            ],
            "--system would change it",
        ),
        (["serve", str(existing), "--task", "poetry"], "task='poetry': choose one of"),
        (["serve", str(existing), "--timeout", "-1"], "timeout=-1: must be > 0"),
        (["generate", str(existing), "x", "--top-k", "many"], "top_k='many': must be int"),
        (["generate", str(existing), "x", "--method", "full"], "unrecognized arguments: --method"),
        (
            ["generate", str(existing), "x", "--sample", "--temperature", "1e-300"],
            "temperature=1e-300: must be >= 0.01",
        ),
        (["generate", str(existing), "x", "--seed", str(2**70)], "seed=1180591620717411303424"),
        (
            ["generate", str(_damaged("interrupted", copy)), "x"],
            "interrupted run (last checkpoint: step 300) — continue it with `gentune train "
            "--config",
        ),
        (["generate", str(_damaged("truncated-weights", copy)), "x"], "cannot load"),
        (["generate", str(_damaged("template-unknown-key", copy)), "x"], "unknown keys colour"),
        (["generate", str(_damaged("template-missing-key", copy)), "x"], "missing keys eos_token"),
        (["generate", str(_damaged("manifest-missing-key", copy)), "x"], "missing keys method"),
        (["generate", str(_damaged("manifest-not-json", copy)), "x"], "cannot read the manifest"),
        (["generate", str(_damaged("no-tokenizer", copy)), "x"], "cannot load"),
        (["evaluate", str(existing), "--data", str(pairs), "--out", str(a_file)], "is a file"),
        (
            [
                "evaluate",
                str(existing),
                "--data",
                str(pairs),
                "--out",
                str(tmp / "e"),
                "--limit",
                "-1",
            ],
            "-1 must be > 0",
        ),
        (
            ["evaluate", model, "--data", str(pairs), "--out", str(tmp / "e")],
            "is a plain model: name the task with --task",
        ),
        (
            ["evaluate", str(existing), "--data", str(unlabelled), "--out", str(tmp / "e")],
            "inputs.jsonl:1: field 'output' is missing",
        ),
        (
            [
                "evaluate",
                str(existing),
                "--data",
                str(pairs),
                "--out",
                str(tmp / "e"),
                "--task",
                "translation",
            ],
            "was trained for task 'summarization'",
        ),
        (["serve", str(existing), "--port", "70000"], "a port is a number from 1 to 65535"),
        (["serve", str(existing), "--port", "http"], "a port is a number"),
        (["serve", str(existing), "--max-queue", "0"], "must be > 0"),
        (["serve", str(_damaged("interrupted", copy))], "interrupted run"),
        (["export", str(tmp), "--out", str(tmp / "x1")], "not a gentune run directory"),
        (["export", str(existing), "--out", str(existing / "inside")], "inside or around the run"),
        (["export", str(existing), "--out", str(a_file)], "is a file"),
        (
            ["export", str(_damaged("interrupted", copy)), "--out", str(tmp / "x2")],
            "interrupted run",
        ),
        (["chat", str(tmp / "no-such-model")], "no such directory"),
        (["demo", "--epochs", "0"], "0 must be > 0"),
        (
            [
                "distill",
                "--task",
                "summarization",
                "--teacher",
                str(existing),
                "--inputs",
                str(tmp / "none.jsonl"),
                "--out",
                str(tmp / "dd"),
            ],
            "--inputs " + str(tmp / "none.jsonl") + ": no such file",
        ),  # fmt: skip
        (
            [
                "distill",
                "--task",
                "dialogue",
                "--teacher",
                str(existing),
                "--inputs",
                str(pairs),
                "--out",
                str(tmp / "dd"),
            ],
            "distill labels inputs with outputs (pairs tasks)",
        ),  # fmt: skip
        (
            [
                "distill",
                "--task",
                "summarization",
                "--teacher",
                "ftp://x",
                "--inputs",
                str(pairs),
                "--out",
                str(tmp / "dd"),
                "--retries",
                "-1",
            ],
            "give a whole number >= 0",
        ),  # fmt: skip
        (
            ["plan", "--task", "summarization", "--data", f"{pairs}:0", "--out", str(tmp / "p")],
            "the weight after ':' must be a number > 0",
        ),
    ]


def test_bad_invocations_give_one_line_and_exit_2(
    tiny_gpt2, pairs_file, tmp_path, copied_run, capsys
):
    failures = []
    for argv, expected in _cases(tmp_path, tiny_gpt2, pairs_file, copied_run):
        code = main(argv)
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1] if err.strip() else ""
        ok = (
            code == 2
            and "Traceback" not in err
            and expected in last
            and last.startswith(f"gentune {argv[0]}: error: ")
        )
        if not ok:
            failures.append(f"{argv}: exit {code}, stderr: {err[-600:]!r}")
    assert not failures, "\n".join(failures)


def test_a_bug_shows_its_traceback_and_asks_for_a_report(monkeypatch, capsys):
    import gentune.cli as cli

    def broken(args):
        raise ZeroDivisionError("a real bug")

    parser = cli.build_parser()
    real = cli.build_parser

    def patched():
        p = real()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                action.choices["demo-data"].set_defaults(func=broken)
        return p

    monkeypatch.setattr(cli, "build_parser", patched)
    assert parser is not None
    code = main(["demo-data"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" in err and "ZeroDivisionError: a real bug" in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("gentune demo-data: internal error: this is a bug in gentune")
    )


def _train_one_step(model, data, out) -> dict:
    """`gentune train` for one step on `data`; the run's manifest."""
    argv = ["train", "--task", "summarization", "--data", str(data), "--model", model]
    argv += ["--max-steps", "1", "--out", str(out), "--no-progress", "--eval-generate", "0"]
    assert main(argv) == 0
    return json.loads((out / "manifest.json").read_text())


def test_compressed_and_utf16_data_train_like_plain(tiny_gpt2, tmp_path):
    """.gz / .bz2 are read transparently, UTF-16 by its byte-order mark: same rows."""
    from gentune.data.records import read_records

    text = "".join(json.dumps(r) + "\n" for r in PAIRS)
    plain = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "p.jsonl.bz2").write_bytes(bz2.compress(text.encode()))
    (tmp_path / "p16.jsonl").write_bytes(text.encode("utf-16"))
    want = [(r.input, r.output) for r in read_records(plain, kind="pairs")]
    for name in ("p.jsonl.gz", "p.jsonl.bz2", "p16.jsonl"):
        got = [(r.input, r.output) for r in read_records(tmp_path / name, kind="pairs")]
        assert got == want, name
    manifest = _train_one_step(tiny_gpt2, tmp_path / "p.jsonl.gz", tmp_path / "r")
    assert manifest["stats"]["read"][0]["rows"] == len(PAIRS)


def test_train_from_a_datasets_directory(tiny_gpt2, tmp_path):
    """A save_to_disk directory trains like a file; its fingerprint covers its files, so the
    manifest records the data and resume can compare it."""
    from datasets import Dataset

    Dataset.from_list(PAIRS).save_to_disk(str(tmp_path / "ds"))
    manifest = _train_one_step(tiny_gpt2, tmp_path / "ds", tmp_path / "r")
    assert manifest["stats"]["read"][0]["rows"] == len(PAIRS)
    assert len(manifest["data"][0]["sha256"]) == 64
