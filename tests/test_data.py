"""Reading data: JSONL/CSV/TSV/text, chats, compressed and UTF-16 files, and errors that name
file, row and field."""

import pytest

from gentune.data.records import DataError, ReadReport, read_records, split_indices


def test_jsonl_csv_tsv_read_the_same(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        '{"input": "x, y", "output": "z"}\n\n{"input": "a", "output": "b"}\n'
    )
    (tmp_path / "a.csv").write_text('input,output\n"x, y",z\na,b\n')
    (tmp_path / "a.tsv").write_text("input\toutput\nx, y\tz\na\tb\n")
    for name in ("a.jsonl", "a.csv", "a.tsv"):
        recs = read_records(tmp_path / name, kind="pairs")
        assert [(r.input, r.output) for r in recs] == [("x, y", "z"), ("a", "b")]
    assert [r.row for r in read_records(tmp_path / "a.jsonl", kind="pairs")] == [1, 3]


def test_mapped_columns(tmp_path):
    (tmp_path / "d.csv").write_text("article,headline\nlong text,short\n")
    from gentune.data.records import Fields

    recs = read_records(
        tmp_path / "d.csv", kind="pairs", fields=Fields(input="article", output="headline")
    )
    assert recs[0].input == "long text" and recs[0].output == "short"


@pytest.mark.parametrize(
    "content,expected",
    [
        (
            '{"input": "a", "output": "b"}\n{"input": "a", "output": }\n',
            r"bad.jsonl:2: malformed JSON",
        ),
        (
            '{"input": "a", "output": "b"}\n{"input": "a"}\n',
            r"bad.jsonl:2: field 'output' is missing",
        ),
        ('{"input": "a", "output": "  "}\n', r"bad.jsonl:1: field 'output' is empty"),
        ('{"input": 3, "output": "b"}\n', r"bad.jsonl:1: field 'input' must be a string, got int"),
        (
            '{"input": "a", "output": "b"}\n[1, 2]\n',
            r"bad.jsonl:2: expected a JSON object, got list",
        ),
        ("\n\n", r"bad.jsonl: the file is empty"),
    ],
)
def test_errors_name_file_row_and_field(tmp_path, content, expected):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(DataError, match=expected):
        read_records(p, kind="pairs")


def test_non_utf8_names_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"input": "a", "output": "b"}\n{"input": "caf\xe9", "output": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: byte 0xe9 .* not UTF-8"):
        read_records(p, kind="pairs")


def test_csv_row_numbers_and_extra_cells(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("input,output\na,b\nc,\n")
    with pytest.raises(DataError, match=r"bad.csv:3: field 'output' is empty"):
        read_records(p, kind="pairs")
    p.write_text("input,output\na,b,c\n")
    with pytest.raises(DataError, match=r"bad.csv:2: more cells than header"):
        read_records(p, kind="pairs")


def test_skip_invalid_counts_rows(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_text('{"input": "a", "output": "b"}\n{"input": "a"}\n{"input": "", "output": "b"}\n')
    report = ReadReport(path=str(p))
    recs = read_records(p, kind="pairs", skip_invalid=True, report=report)
    assert len(recs) == 1 and len(report.skipped) == 2
    assert report.skipped[0].startswith(f"{p}:2:")


def test_chat_records_validated(tmp_path):
    p = tmp_path / "chat.jsonl"
    p.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        '{"messages": [{"role": "bot", "content": "hi"}]}\n'
    )
    with pytest.raises(DataError, match=r"chat.jsonl:2: messages\[0\].role is 'bot'"):
        read_records(p, kind="chat")
    p.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(DataError, match="no assistant turn"):
        read_records(p, kind="chat")


def test_plain_text_paragraphs(tmp_path):
    p = tmp_path / "story.txt"
    p.write_text("Once upon a time.\nThe end.\n\n\nAnother story.\n")
    recs = read_records(p, kind="text")
    assert [r.text for r in recs] == ["Once upon a time.\nThe end.", "Another story."]
    assert [r.row for r in recs] == [1, 5]


def test_split_is_seeded_and_disjoint():
    a = split_indices(10, val_fraction=0.2, seed=1, source="d.jsonl")
    b = split_indices(10, val_fraction=0.2, seed=1, source="d.jsonl")
    assert a == b and len(a[1]) == 2
    assert not set(a[0]) & set(a[1]) and sorted(a[0] + a[1]) == list(range(10))
    assert split_indices(10, val_fraction=0.2, seed=2, source="d.jsonl") != a
    with pytest.raises(DataError, match="d.jsonl: only 1 row"):
        split_indices(1, val_fraction=0.2, seed=1, source="d.jsonl")


@pytest.mark.parametrize(
    "name,content,expected",
    [
        (
            "few.tsv",
            "input\toutput\na\tb\nonly-one-cell\n",
            r"few.tsv:3: the row has 1 cell, the header 2 columns \(input, output\); separate every "
            r"cell with a tab",
        ),
        (
            "few.csv",
            "input,output,extra\na,b,c\nx,y\n",
            r"few.csv:3: the row has 2 cells, the header 3 columns",
        ),
        (
            "null.jsonl",
            '{"input": "a", "output": null}\n',
            r"null.jsonl:1: field 'output' is null; give it a string",
        ),
        (
            "assistant-first.jsonl",
            '{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}\n',
            r"assistant-first.jsonl:1: messages\[0\]: the conversation starts with the assistant's",
        ),
        (
            "system-then-assistant.jsonl",
            '{"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}\n',
            r"system-then-assistant.jsonl:1: messages\[1\]: the conversation starts with the assistant",
        ),
    ],
)
def test_messages_point_the_right_way(tmp_path, name, content, expected):
    p = tmp_path / name
    p.write_text(content)
    kind = "chat" if "messages" in content else "pairs"
    with pytest.raises(DataError, match=expected):
        read_records(p, kind=kind)


def test_compressed_files_are_read_or_named(tmp_path):
    import gzip
    import zipfile

    rows = '{"input": "a", "output": "b"}\n'
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(rows.encode()))
    assert read_records(tmp_path / "d.jsonl.gz", kind="pairs")[0].output == "b"
    (tmp_path / "gz-named-plain.jsonl").write_bytes(gzip.compress(rows.encode()))
    with pytest.raises(
        DataError,
        match=r"gz-named-plain.jsonl: the file is compressed \(gz\), "
        r"not plain text; rename it to gz-named-plain.jsonl.gz",
    ):
        read_records(tmp_path / "gz-named-plain.jsonl", kind="pairs")
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as z:
        z.writestr("d.jsonl", rows)
    (tmp_path / "d.zip").rename(tmp_path / "zipped.jsonl")
    with pytest.raises(DataError, match=r"compressed \(zip\), not plain text; extract it first"):
        read_records(tmp_path / "zipped.jsonl", kind="pairs")


def test_utf16_and_utf32_by_their_byte_order_mark(tmp_path):
    text = "input,output\ncafé,日本語\n"
    for enc in ("utf-16", "utf-16-be", "utf-32"):
        p = tmp_path / f"{enc}.csv"
        data = text.encode(enc)
        if enc == "utf-16-be":
            data = b"\xfe\xff" + data
        p.write_bytes(data)
        rec = read_records(p, kind="pairs")[0]
        assert (rec.input, rec.output) == ("café", "日本語"), enc


def test_parquet_and_datasets_directories_read_like_jsonl(tmp_path):
    """Parquet files and `datasets` save_to_disk directories give the same records as JSONL,
    and their bad rows are named by file, row and field like any other."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    from .conftest import PAIRS, write_jsonl

    want = [
        (r.input, r.output)
        for r in read_records(write_jsonl(tmp_path / "p.jsonl", PAIRS), kind="pairs")
    ]
    pq.write_table(pa.Table.from_pylist(PAIRS), tmp_path / "p.parquet")
    got = [(r.input, r.output) for r in read_records(tmp_path / "p.parquet", kind="pairs")]
    assert got == want
    Dataset.from_list(PAIRS).save_to_disk(str(tmp_path / "ds"))
    got = [(r.input, r.output) for r in read_records(tmp_path / "ds", kind="pairs")]
    assert got == want
    DatasetDict({"train": Dataset.from_list(PAIRS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(
        DataError,
        match=r"dd: a datasets DatasetDict with splits train; give "
        r"one of them, e.g. .*dd/train",
    ):
        read_records(tmp_path / "dd", kind="pairs")
    assert len(read_records(tmp_path / "dd" / "train", kind="pairs")) == len(PAIRS)
    bad = [{"input": "a", "output": "b"}, {"input": "a", "output": None}]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet:2: field 'output' is null"):
        read_records(tmp_path / "bad.parquet", kind="pairs")
    (tmp_path / "bad.parquet").rename(tmp_path / "parquet-named.jsonl")
    with pytest.raises(
        DataError,
        match=r"the file is Parquet, not text; name it "
        r"parquet-named.parquet",
    ):
        read_records(tmp_path / "parquet-named.jsonl", kind="pairs")


def test_line_separators_inside_json_strings(tmp_path):
    """json.dumps(ensure_ascii=False) writes U+2028/U+2029 as they are: inside a JSON string they
    are text, not line ends (reading the whole file with str.splitlines broke such rows)."""
    import json

    p = tmp_path / "d.jsonl"
    row = {"input": "a\u2028b", "output": "c\u2029d\x0ce"}
    p.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    (rec,) = read_records(p, kind="pairs")
    assert (rec.input, rec.output) == (row["input"], row["output"])


def test_rows_are_streamed_not_read_whole(tmp_path):
    """The first record comes before a later malformed row is read."""
    from gentune.data.records import iter_records

    p = tmp_path / "d.jsonl"
    p.write_text('{"input": "a", "output": "b"}\n{"input": \n')
    rows = iter_records(p, kind="pairs")
    assert next(rows).input == "a"
    with pytest.raises(DataError, match=r"d.jsonl:2: malformed JSON"):
        next(rows)
