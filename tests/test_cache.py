"""The tokenized data cache: the same examples as encoding in memory, reused across runs,
keyed by what decides the ids, complete or absent, and the errors of reading kept."""

import json

import numpy as np
import pytest

from gentune.data import cache, encode
from gentune.data.encode import encode_dataset
from gentune.data.records import DataError, Fields, read_records
from gentune.data.tasks import build_template, get_task
from gentune.models.load import load_model

from .conftest import PAIRS, write_jsonl


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GENTUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tok_tpl(tiny_llama):
    _, tok, _ = load_model(tiny_llama)
    return tok, build_template(get_task("summarization"), tok)


def _encode(
    path,
    tok_tpl,
    *,
    max_length=128,
    skip_invalid=False,
    template=None,
    log=None,
    kind="pairs",
    progress=False,
):
    tok, tpl = tok_tpl
    return cache.encode_file(
        path,
        kind=kind,
        fields=Fields(),
        template=template or tpl,
        tokenizer=tok,
        max_length=max_length,
        skip_invalid=skip_invalid,
        progress=progress,
        log=log or (lambda *_: None),
    )


def _rows(n):
    return [
        PAIRS[i % len(PAIRS)] | {"input": PAIRS[i % len(PAIRS)]["input"] + f" #{i}"}
        for i in range(n)
    ]


def test_cached_examples_equal_in_memory_encoding(home, tmp_path, tok_tpl):
    path = write_jsonl(tmp_path / "d.jsonl", _rows(30))
    enc = _encode(path, tok_tpl)
    recs = np.array([1, 4, 5, 20])
    part = enc.part(recs, max_length=128, skip_long_targets=False)
    records = read_records(path, kind="pairs")
    want, _ = encode_dataset([records[i] for i in recs], tok_tpl[1], tok_tpl[0], max_length=128)
    assert list(part.examples) == list(want)
    assert part.examples.take([3, 0]) == [want[3], want[0]]
    assert part.examples.lengths.tolist() == [len(e.input_ids) for e in want]
    assert part.examples.n_targets.tolist() == [e.n_targets for e in want]
    assert list(part.records) == [records[i] for i in recs]
    assert part.records[1:3] == [records[4], records[5]]


def test_second_use_reads_the_cache_without_tokenizing(home, tmp_path, tok_tpl, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", _rows(12))
    lines: list[str] = []
    first = _encode(path, tok_tpl, log=lines.append)
    assert "encoded into the cache" in lines[-1]

    def refuse(*_, **__):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(cache, "encode_example", refuse)
    again = _encode(path, tok_tpl, log=lines.append)
    assert "from the cache" in lines[-1]
    everything = np.arange(first.n_records)
    a = first.part(everything, max_length=128, skip_long_targets=False).examples
    b = again.part(everything, max_length=128, skip_long_targets=False).examples
    assert list(a) == list(b) and len(a) == 12


def test_key_follows_content_template_length_and_tokenizer(home, tmp_path, tok_tpl, tiny_gpt2):
    from dataclasses import replace

    path = write_jsonl(tmp_path / "d.jsonl", _rows(5))
    _encode(path, tok_tpl)
    _encode(path, tok_tpl, max_length=64)
    _encode(path, tok_tpl, template=replace(tok_tpl[1], instruction="Shorten this."))
    _, gpt2_tok, _ = load_model(tiny_gpt2)
    _encode(path, (gpt2_tok, build_template(get_task("summarization"), gpt2_tok)))
    write_jsonl(path, _rows(6))  # same path, other bytes
    _encode(path, tok_tpl)
    assert len(list((home / "data").iterdir())) == 5
    _encode(tmp_path.joinpath("d.jsonl").rename(tmp_path / "moved.jsonl"), tok_tpl)
    assert len(list((home / "data").iterdir())) == 5  # the content counts, not the path


def test_interrupted_build_leaves_no_entry(home, tmp_path, tok_tpl, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", _rows(20))
    real, calls = cache.encode_example, []

    def die_at_row_10(record, *args, **kwargs):
        calls.append(record.row)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(record, *args, **kwargs)

    monkeypatch.setattr(cache, "encode_example", die_at_row_10)
    with pytest.raises(KeyboardInterrupt):
        _encode(path, tok_tpl)
    assert not any((home / "data").iterdir())  # neither an entry nor its temporary folder
    monkeypatch.setattr(cache, "encode_example", real)
    assert _encode(path, tok_tpl).n_records == 20


def test_invalid_rows_are_kept_with_the_entry(home, tmp_path, tok_tpl):
    path = tmp_path / "d.jsonl"
    rows = [json.dumps(r) for r in _rows(4)]
    rows[2] = json.dumps({"input": "no output here"})
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:3: field 'output' is missing"):
        _encode(path, tok_tpl)
    enc = _encode(path, tok_tpl, skip_invalid=True)
    assert enc.n_records == 3 and len(enc.skipped) == 1
    # the cached entry still names the row when --skip-invalid is not given
    with pytest.raises(DataError, match=r"d.jsonl:3: field 'output' is missing.*--skip-invalid"):
        _encode(path, tok_tpl)


def test_long_targets_are_named_or_counted_never_trained(home, tmp_path, tok_tpl):
    rows = _rows(6)
    rows[4] = {"input": "short", "output": "a very long target " * 40}
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    enc = _encode(path, tok_tpl, max_length=60)
    everything = np.arange(enc.n_records)
    with pytest.raises(DataError, match=r"1 rows have targets.*d.jsonl:5"):
        enc.part(everything, max_length=60, skip_long_targets=False)
    part = enc.part(everything, max_length=60, skip_long_targets=True)
    assert part.report.skipped_too_long == 1 and part.report.too_long == [f"{path}:5"]
    assert len(part.examples) == 5 and f"{path}:5" not in [e.where for e in part.examples]
    # rows without that one are fine
    assert len(enc.part(np.array([0, 1]), max_length=60, skip_long_targets=False).examples) == 2


def test_long_texts_become_windows_with_their_report(home, tmp_path, tiny_llama):
    _, tok, _ = load_model(tiny_llama)
    tpl = build_template(get_task("text"), tok)
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "hello world " * 60}, {"text": "short"}])
    enc = _encode(path, (tok, tpl), kind="text", max_length=32)
    part = enc.part(np.arange(2), max_length=32, skip_long_targets=False)
    want, report = encode_dataset(read_records(path, kind="text"), tpl, tok, max_length=32)
    assert list(part.examples) == list(want) and len(want) > 2
    assert (part.report.split_rows, part.report.examples) == (report.split_rows, len(want))
    assert part.examples.prompted.tolist() == want.prompted.tolist()


def test_packing_plans_from_lengths_and_builds_the_same_rows(home, tmp_path, tok_tpl):
    path = write_jsonl(tmp_path / "d.jsonl", _rows(10))
    part = _encode(path, tok_tpl).part(np.arange(10), max_length=128, skip_long_targets=False)
    packed = encode.pack_examples(part.examples, 128)
    in_memory = encode.pack_examples(encode.ExampleList(part.examples), 128)
    assert list(packed) == list(in_memory)
    assert packed.lengths.tolist() == [len(r.input_ids) for r in packed]
    assert packed.n_targets.tolist() == [r.n_targets for r in packed]


def test_progress_bar_while_tokenizing(home, tmp_path, tok_tpl, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", _rows(7))
    _encode(path, tok_tpl, progress=True)
    err = capsys.readouterr().err
    assert "tokenize d.jsonl" in err and "7/7" in err
