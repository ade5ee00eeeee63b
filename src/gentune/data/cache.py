"""The tokenized data cache: a data file read, validated and encoded once into a memory-mapped
Arrow table (written and read through `datasets`), then reused by every run and resume that
reads the same bytes with the same tokenizer, template, length limit and field names.

Training reads the rows it batches from the table on demand and plans its batches from the
length columns alone, so a run's memory does not grow with the number of rows: only the pages
of the table it touches come in, and the kernel can drop them again. An entry is complete or
absent: it is written into a temporary directory and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from gentune.data.encode import EncodeReport, Example, Examples, encode_example, too_long_error
from gentune.data.records import (
    Fields,
    Kind,
    ReadReport,
    Record,
    fingerprint,
    iter_records,
    record_key,
)
from gentune.data.tasks import PromptTemplate
from gentune.errors import DataError
from gentune.tokenizer import PairTokenizer

FORMAT = 1  # the table's layout; with the code's own hash in the key, old entries are not read


def features():
    """The table's columns: one row per example (a long text gives several windows)."""
    from datasets import Features, List, Value

    return Features(
        {
            "rec": Value("int32"),  # the record's number among the file's valid rows (0-based)
            "row": Value("int32"),  # its row in the file (1-based, as errors name it)
            "window": Value("int32"),  # 0, or the window's number in a long text
            "record": Value("string"),  # the record as JSON: input/output, messages or text
            "key": Value("int64"),  # a hash of the record's content: equal rows, equal keys
            "input_ids": List(Value("int32")),
            "labels": List(Value("int32")),  # IGNORE on context tokens
            "n_targets": Value("int32"),
            "length": Value("int32"),  # tokens the model reads (Example.size)
            "prompted": Value("bool"),  # a context comes before the target (Example.prompted)
            "seq2seq": Value("bool"),  # labels are an encoder-decoder's target sequence
            "truncated": Value("int32"),  # input tokens removed to fit (first window only)
            "too_long": Value("bool"),  # the target cannot fit: no tokens, never trained
        }
    )


def cache_dir() -> Path:
    """Where encoded data files are kept: $GENTUNE_HOME/data (see `models.gentune_home`)."""
    from gentune.config import gentune_home

    return gentune_home() / "data"


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides a tokenizer's ids: its class, vocabulary and rules (the fast
    tokenizer's JSON), special tokens and chat template; both sides' for a `PairTokenizer`."""
    if isinstance(tokenizer, PairTokenizer):
        return _sha256(
            [
                tokenizer_fingerprint(t)
                for t in (tokenizer.source_tokenizer, tokenizer.target_tokenizer)
            ]
        )
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return _sha256(
        [
            type(tokenizer).__name__,
            rules,
            {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
            getattr(tokenizer, "chat_template", None),
        ]
    )


def _code_hash() -> str:
    """The reading and encoding code's own hash: a change to it makes new entries."""
    here = Path(__file__).parent
    return _sha256(
        [(here / f).read_text() for f in ("cache.py", "records.py", "encode.py", "tasks.py")]
    )


def _sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _content_key(record: Record) -> int:
    digest = hashlib.blake2b(json.dumps(record_key(record)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _record_json(record: Record) -> str:
    fields = ("input", "output", "messages", "text")
    return json.dumps(
        {f: getattr(record, f) for f in fields if getattr(record, f) is not None},
        ensure_ascii=False,
    )


@dataclass(frozen=True)
class Source:
    """What an entry is made from; its key."""

    sha256: str  # the file's bytes
    kind: Kind
    fields: Fields
    tokenizer: str  # tokenizer_fingerprint
    template: str  # the template's settings, as saved with a run
    max_length: int

    def key(self) -> str:
        return _sha256([FORMAT, _code_hash(), asdict(self)])[:32]


def encode_file(
    path: str | Path,
    *,
    kind: Kind,
    fields: Fields,
    template: PromptTemplate,
    tokenizer,
    max_length: int,
    skip_invalid: bool,
    progress: bool = False,
    log=print,
) -> Encoded:
    """The file's encoded rows, from the cache, or read, validated and encoded into it now.

    An invalid row stops the reading at once unless skip_invalid; then it is counted (its
    reason kept with the entry, so a later run without --skip-invalid names it too)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file (check the path given to --data/--val)")
    source = Source(
        sha256=fingerprint(path),
        kind=kind,
        fields=fields,
        tokenizer=tokenizer_fingerprint(tokenizer),
        template=_sha256(asdict(template)),
        max_length=max_length,
    )
    entry = cache_dir() / source.key()
    if not (entry / "info.json").exists():
        _build(entry, path, source, template, tokenizer, skip_invalid, progress, log)
    else:
        log(f"gentune: {path}: encoded rows from the cache ({entry})")
    encoded = Encoded.open(entry, str(path))
    if encoded.skipped and not skip_invalid:
        raise DataError(f"{encoded.skipped[0]} (use --skip-invalid to drop such rows)")
    return encoded


def _build(entry, path, source, template, tokenizer, skip_invalid, progress, log) -> None:
    """Read, validate and encode the file into a new cache entry, atomically."""
    from datasets.arrow_writer import ArrowWriter
    from tqdm.auto import tqdm

    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    report = ReadReport(path=str(path))
    bar = tqdm(
        desc=f"tokenize {path.name}",
        unit=" rows",
        total=_rows_estimate(path),
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        with ArrowWriter(features=features(), path=str(tmp / "examples.arrow")) as writer:
            records = iter_records(
                path,
                kind=source.kind,
                fields=source.fields,
                skip_invalid=skip_invalid,
                report=report,
            )
            for rec, record in enumerate(records):
                for example in _encode(record, template, tokenizer, source.max_length):
                    writer.write({"rec": rec, "row": record.row, **example})
                bar.update(1)
            writer.finalize()
        info = {
            "format": FORMAT,
            "source": asdict(source),
            "rows": report.rows,
            "skipped": report.skipped,
        }
        (tmp / "info.json").write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
        bar.close()
        try:
            os.replace(tmp, entry)
        except OSError:
            if not (entry / "info.json").exists():
                raise
            shutil.rmtree(tmp)  # another process (a rank of this run) finished it first
    except BaseException:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"gentune: {path}: {report.rows} rows encoded into the cache ({entry})")


def _rows_estimate(path: Path) -> int | None:
    """Lines in an uncompressed JSONL file (its rows, give or take blank lines), for the
    progress bar; None where that cannot be counted cheaply."""
    if path.is_dir() or path.suffix.lower() not in (".jsonl", ".ndjson"):
        return None
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _encode(record: Record, template, tokenizer, max_length: int) -> list[dict]:
    """The table rows of one record: its examples, or one marker row for a target too long."""
    common = {"record": _record_json(record), "key": _content_key(record)}
    report = EncodeReport()
    try:
        examples = encode_example(record, template, tokenizer, max_length=max_length, report=report)
    except DataError:
        if record.where not in report.too_long:
            raise
        marker = {"input_ids": [], "labels": [], "n_targets": 0, "length": 0}
        marker |= {"prompted": False, "seq2seq": False}
        marker |= {"truncated": 0, "too_long": True}
        return [{**common, "window": 0, **marker}]
    return [
        {
            **common,
            "window": w,
            "input_ids": e.input_ids,
            "labels": e.labels,
            "n_targets": e.n_targets,
            "length": e.size,
            "prompted": e.prompted,
            "seq2seq": e.seq2seq,
            "truncated": report.truncated_tokens if w == 0 else 0,
            "too_long": False,
        }
        for w, e in enumerate(examples)
    ]


class Encoded:
    """A cache entry opened (memory-mapped): the file's records and examples, selected by
    record for the training and validation parts."""

    def __init__(self, table, info: dict, source: str):
        self.table, self.info, self.source = table, info, source
        self.skipped: list[str] = info["skipped"]

    @classmethod
    def open(cls, entry: Path, source: str) -> Encoded:
        from datasets import Dataset

        info = json.loads((entry / "info.json").read_text())
        return cls(Dataset.from_file(str(entry / "examples.arrow")), info, source)

    def column(self, name: str) -> np.ndarray:
        return self.table.data.column(name).to_numpy()

    @cached_property
    def first(self) -> np.ndarray:
        """The table row of each record's first window, by record number."""
        return np.flatnonzero(self.column("window") == 0)

    @property
    def n_records(self) -> int:
        return len(self.first)

    @property
    def sha256(self) -> str:
        """The data file's own hash (what the manifest records and a resume compares)."""
        return self.info["source"]["sha256"]

    def part(self, recs: np.ndarray, *, max_length: int, skip_long_targets: bool) -> Part:
        """The records `recs` (sorted record numbers): their examples, in file order, and what
        encoding did to them. Targets that cannot fit raise, naming the rows, unless skipped."""
        rows = self.column("row")
        long = self.column("too_long")[self.first[recs]]
        too_long = [f"{self.source}:{r}" for r in rows[self.first[recs][long]]]
        if too_long and not skip_long_targets:
            raise too_long_error(too_long, max_length)
        chosen = np.zeros(self.n_records, dtype=bool)
        chosen[recs] = True
        table_rows = np.flatnonzero(chosen[self.column("rec")] & ~self.column("too_long"))
        truncated = self.column("truncated")[self.first[recs]]
        windows = self.column("window")[table_rows]
        report = EncodeReport(
            rows=len(recs),
            examples=len(table_rows),
            truncated_rows=int((truncated > 0).sum()),
            truncated_tokens=int(truncated.sum()),
            split_rows=int((windows == 1).sum()),
            too_long=too_long,
            skipped_too_long=len(too_long),
        )
        return Part(
            CachedExamples(self, table_rows),
            CachedRecords(self, self.first[recs]),
            report,
            self.column("key")[self.first[recs]],
        )


@dataclass
class Part:
    """Some records of an entry (the training or the validation rows)."""

    examples: CachedExamples
    records: CachedRecords
    report: EncodeReport
    keys: np.ndarray  # the records' content hashes: equal rows, equal keys


class CachedExamples(Examples):
    """Examples read from the memory-mapped table when they are asked for."""

    def __init__(self, encoded: Encoded, table_rows: np.ndarray):
        self.encoded, self.rows = encoded, table_rows
        self.lengths = encoded.column("length")[table_rows].astype(np.int64)
        self.n_targets = encoded.column("n_targets")[table_rows].astype(np.int64)
        self.prompted = encoded.column("prompted")[table_rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        return self.take([i])[0]

    def take(self, indices) -> list[Example]:
        batch = self.encoded.table[[int(self.rows[i]) for i in indices]]
        return [
            Example(ids, labels, f"{self.encoded.source}:{row}", seq2seq=seq2seq)
            for ids, labels, row, seq2seq in zip(
                batch["input_ids"], batch["labels"], batch["row"], batch["seq2seq"], strict=True
            )
        ]


class CachedRecords(Sequence[Record]):
    """Records rebuilt from the table when they are asked for."""

    def __init__(self, encoded: Encoded, table_rows: np.ndarray):
        self.encoded, self.rows = encoded, table_rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = self.encoded.table[int(self.rows[i])]
        fields = json.loads(row["record"])
        if "messages" in fields:
            fields["messages"] = tuple(fields["messages"])
        return Record(source=self.encoded.source, row=row["row"], **fields)
