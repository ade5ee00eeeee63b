"""Reading user data: JSONL, CSV, TSV, chat records and plain text, validated row by row.

Every record keeps the file and row it came from, so that any later problem (a target that
cannot fit, say) can name them. Errors name file, row and field, and say what to do.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NoReturn

from gentune.errors import DataError
from gentune.rundir import write_jsonl

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True, kw_only=True)
class Record:
    """One example. Exactly one shape is filled: (input, output), messages, or text."""

    source: str  # file the row came from
    row: int  # 1-based row number in that file (line number for JSONL and text)
    input: str | None = None
    output: str | None = None
    messages: tuple[dict, ...] | None = None  # ({"role":..., "content":...}, ...)
    text: str | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.row}"


@dataclass(frozen=True, kw_only=True)
class Fields:
    """Which column holds what; other column names are mapped with flags."""

    input: str = "input"
    output: str = "output"
    messages: str = "messages"
    text: str = "text"


@dataclass
class ReadReport:
    """What reading a file did: rows read and rows skipped, by reason."""

    path: str
    rows: int = 0
    skipped: list[str] = field(default_factory=list)  # "file:row: reason"


Kind = Literal["pairs", "chat", "text"]


def iter_records(
    path: str | Path,
    *,
    kind: Kind,
    fields: Fields = Fields(),
    require_output: bool = True,
    skip_invalid: bool = False,
    report: ReadReport | None = None,
) -> Iterator[Record]:
    """Validated records of a data file, one at a time: the file is streamed, never held whole
    in memory. Arguments as for `read_records`; `report` counts the rows as they go."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file (check the path given to --data/--val)")
    check_readable(path)
    report = report if report is not None else ReadReport(path=str(path))
    for row_no, row in _rows(path):
        try:
            record = _to_record(
                str(path), row_no, row, kind=kind, fields=fields, require_output=require_output
            )
        except DataError as e:
            if not skip_invalid:
                raise
            report.skipped.append(str(e).split(" (use --skip-invalid")[0])
            continue
        report.rows += 1
        yield record
    if not report.rows:
        raise DataError(f"{path}: no valid rows ({len(report.skipped)} skipped as invalid)")


def read_records(
    path: str | Path,
    *,
    kind: Kind,
    fields: Fields = Fields(),
    require_output: bool = True,
    skip_invalid: bool = False,
    report: ReadReport | None = None,
) -> list[Record]:
    """Read and validate a data file.

    kind: "pairs" wants input/output, "chat" wants messages, "text" wants text (or input/output,
    which are then prompt and continuation). Plain-text files (.txt) give one text record per
    paragraph (blocks separated by blank lines).
    require_output: False for inputs to generate from (no reference needed).
    skip_invalid: drop bad rows (counted in `report`) instead of raising on the first.
    """
    return list(
        iter_records(
            path,
            kind=kind,
            fields=fields,
            require_output=require_output,
            skip_invalid=skip_invalid,
            report=report,
        )
    )


FILE_TYPES = ".jsonl, .csv, .tsv, .txt or .parquet (text optionally compressed: .gz, .bz2, .xz)"


def _rows(path: Path) -> Iterator[tuple[int, object]]:
    """(row number, row) pairs of a data file or a `datasets` directory, streamed."""
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            splits = sorted(p.name for p in path.iterdir() if (p / "dataset_info.json").exists())
            raise DataError(
                f"{path}: a datasets DatasetDict with splits {', '.join(splits)}; "
                f"give one of them, e.g. {path / (splits[0] if splits else 'train')}"
            )
        if (path / "dataset_info.json").exists() and (path / "state.json").exists():
            return _dataset_rows(path)
        raise DataError(
            f"{path}: is a directory; give a {FILE_TYPES} file, or a directory "
            "written by datasets' save_to_disk"
        )
    if path.suffix.lower() == ".parquet":
        return _parquet_rows(path)
    stream, suffix = _open(path)
    if suffix not in (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".txt", ".text", ".md"):
        stream.close()
        raise DataError(f"{path}: unknown file type {suffix!r}; use {FILE_TYPES}")
    lines = _nonempty(path, _lines(path, stream))
    if suffix in (".csv", ".tsv"):
        return _csv_rows(path, lines, delimiter="," if suffix == ".csv" else "\t")
    if suffix in (".txt", ".text", ".md"):
        return _text_rows(lines)
    return _jsonl_rows(path, lines)


def _parquet_rows(path: Path) -> Iterator[tuple[int, object]]:
    """Rows of a Parquet file (numbered from 1), read with pyarrow a batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read it as Parquet ({e})") from None
    if parquet.metadata.num_rows == 0:
        raise DataError(f"{path}: the file is empty; it needs at least one row")
    return _numbered(row for batch in parquet.iter_batches(1024) for row in batch.to_pylist())


def _dataset_rows(path: Path) -> Iterator[tuple[int, object]]:
    """Rows of a directory written by `datasets.Dataset.save_to_disk` (numbered from 1);
    datasets memory-maps its Arrow files."""
    from datasets import load_from_disk

    try:
        data = load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as e:
        raise DataError(f"{path}: cannot load it with datasets.load_from_disk ({e})") from None
    if len(data) == 0:
        raise DataError(f"{path}: the dataset is empty; it needs at least one row")
    return _numbered(data)


def _numbered(rows) -> Iterator[tuple[int, object]]:
    yield from enumerate(rows, start=1)


COMPRESSED = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}
_MAGIC = {
    b"\x1f\x8b": ".gz",
    b"BZh": ".bz2",
    b"\xfd7zXZ": ".xz",
    b"PK\x03\x04": ".zip",
    b"(\xb5/\xfd": ".zst",
    b"PAR1": ".parquet",
}


def _open(path: Path) -> tuple[io.BufferedReader, str]:
    """A binary stream of the file, decompressed where its name ends in .gz/.bz2/.xz, and the
    suffix that says its format (data.jsonl.gz → .jsonl). Other archives are named, never
    misread."""
    import importlib

    suffix = path.suffix.lower()
    try:
        if suffix in COMPRESSED:
            module = importlib.import_module(COMPRESSED[suffix])
            return io.BufferedReader(module.open(path, "rb")), Path(path.stem).suffix.lower()
        stream = path.open("rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror})") from None
    head = stream.peek(8)[:8]
    kind = next((k for magic, k in _MAGIC.items() if head.startswith(magic)), None)
    if kind is None:
        return stream, suffix
    stream.close()
    if kind == ".parquet":
        raise DataError(f"{path}: the file is Parquet, not text; name it {path.stem}.parquet")
    hint = (
        f"rename it to {path.name}{kind}"
        if kind in COMPRESSED
        else "extract it first; gentune reads .gz, .bz2 and .xz directly"
    )
    raise DataError(f"{path}: the file is compressed ({kind[1:]}), not plain text; {hint}")


_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


def _lines(path: Path, stream: io.BufferedReader) -> Iterator[tuple[int, str]]:
    """(line number, text with its line ending) of a UTF-8 stream, decoded line by line so that a
    byte that is not UTF-8 is named by line and column. UTF-16/32 files (with their byte-order
    mark, as some editors and Excel save text) are decoded whole."""
    import lzma
    import zlib

    with stream:
        try:
            head = stream.peek(4)[:4]
            for bom, encoding in _BOMS:
                if head.startswith(bom):
                    yield from enumerate(_decode_whole(path, stream.read(), encoding), start=1)
                    return
            for line_no, raw in enumerate(stream, start=1):
                try:
                    yield line_no, raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}:{line_no}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is "
                        "not UTF-8; re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
                    ) from None
        except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as e:
            raise DataError(
                f"{path}: cannot decompress it as {path.suffix.lower()} ({e}); the file is "
                "damaged or not really compressed that way"
                if path.suffix.lower() in COMPRESSED
                else f"{path}: cannot read the file ({e})"
            ) from None


def _decode_whole(path: Path, raw: bytes, encoding: str) -> list[str]:
    try:
        return raw.decode(encoding).splitlines(keepends=True)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: starts with a {encoding.upper()} byte-order mark but "
            f"byte {e.start} is not {encoding.upper()}; re-save the file as "
            "UTF-8"
        ) from None


def _nonempty(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """The lines, and an error naming the file when none has any text."""
    seen = False
    for line_no, line in lines:
        seen = seen or bool(line.strip())
        yield line_no, line
    if not seen:
        raise DataError(f"{path}: the file is empty; it needs at least one row")


def _jsonl_rows(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, object]]:
    first = True
    for line_no, line in lines:
        if not line.strip():
            continue
        if first and line.lstrip().startswith("["):  # a JSON array of objects is accepted too
            text = line + "".join(rest for _, rest in lines)
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{line_no + e.lineno - 1}: malformed JSON: {e.msg}"
                ) from None
            except RecursionError:
                _too_deep(path, line_no)
            for k, row in enumerate(data if isinstance(data, list) else [], start=1):
                if _depth(row) > MAX_DEPTH:
                    _too_deep(path, k, "row")
            yield from _numbered(data)
            return
        first = False
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{line_no}: malformed JSON at column {e.colno}: {e.msg} "
                "(each line must be one JSON object)"
            ) from None
        except RecursionError:
            _too_deep(path, line_no)
        if _depth(row) > MAX_DEPTH:
            _too_deep(path, line_no)
        yield line_no, row


def _too_deep(path: Path, n: int, what: str = "line") -> NoReturn:
    raise DataError(
        f"{path}:{n}: the {what} nests JSON objects or lists more than {MAX_DEPTH} levels deep; "
        "a row is an object of strings (or of a list of messages): fix or drop it"
    )


def _csv_rows(
    path: Path, lines: Iterator[tuple[int, str]], delimiter: str
) -> Iterator[tuple[int, object]]:
    reader = csv.DictReader((line for _, line in lines), delimiter=delimiter)
    if not reader.fieldnames:
        raise DataError(f"{path}:1: no header row; the first row must name the columns")
    for row in reader:
        # line_num is the physical line where the row ended; rows can span lines when quoted.
        if None in row:
            raise DataError(
                f"{path}:{reader.line_num}: more cells than header columns "
                f"({len(reader.fieldnames)}); quote cells that contain the delimiter"
            )
        if any(v is None for v in row.values()):
            cells = sum(v is not None for v in row.values())
            sep = "tab" if delimiter == "\t" else repr(delimiter)
            raise DataError(
                f"{path}:{reader.line_num}: the row has {cells} cell{'s' * (cells != 1)}, the "
                f"header {len(reader.fieldnames)} columns ({', '.join(reader.fieldnames)}); "
                f"separate every cell with a {sep} (use --skip-invalid to drop such rows)"
            )
        yield reader.line_num, row


def _text_rows(lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, object]]:
    para: list[str] = []
    start = 0
    for line_no, line in lines:
        if line.strip():
            if not para:
                start = line_no
            para.append(line.rstrip("\r\n"))
        elif para:
            yield start, {"text": "\n".join(para)}
            para = []
    if para:
        yield start, {"text": "\n".join(para)}


def _field(where: str, row: dict, name: str, *, required: bool = True) -> str | None:
    hint = " (use --skip-invalid to drop such rows)"
    if row.get(name, "") is None:
        if not required:
            return None
        raise DataError(f"{where}: field {name!r} is null; give it a string{hint}")
    if name not in row:
        if not required:
            return None
        have = ", ".join(map(repr, row)) or "none"
        raise DataError(
            f"{where}: field {name!r} is missing (fields present: {have}; "
            f"name another field with --input-field/--output-field){hint}"
        )
    value = row[name]
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field {name!r} must be a string, got {type(value).__name__} "
            f"{json.dumps(value)[:60]}{hint}"
        )
    if not value.strip():
        if not required:
            return None
        raise DataError(f"{where}: field {name!r} is empty{hint}")
    return value


def _to_record(
    source: str, row_no: int, row, *, kind: Kind, fields: Fields, require_output: bool
) -> Record:
    where = f"{source}:{row_no}"
    if not isinstance(row, dict):
        raise DataError(
            f"{where}: expected a JSON object, got {type(row).__name__} "
            "(use --skip-invalid to drop such rows)"
        )
    if kind == "pairs" or (kind == "text" and fields.text not in row):
        return Record(
            source=source,
            row=row_no,
            input=_field(where, row, fields.input),
            output=_field(where, row, fields.output, required=require_output),
        )
    if kind == "text":
        return Record(source=source, row=row_no, text=_field(where, row, fields.text))
    return Record(
        source=source, row=row_no, messages=_messages(where, row, fields.messages, require_output)
    )


def _messages(where: str, row: dict, name: str, require_output: bool) -> tuple[dict, ...]:
    hint = " (use --skip-invalid to drop such rows)"
    msgs = row.get(name)
    if msgs is None:
        raise DataError(
            f"{where}: field {name!r} is missing; chat rows need "
            f'"{name}": [{{"role": "user", "content": "..."}}, ...]{hint}'
        )
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: field {name!r} must be a non-empty list of messages{hint}")
    out: list[dict] = []
    for i, m in enumerate(msgs):
        at = f"{where}: {name}[{i}]"
        if not isinstance(m, dict):
            raise DataError(f"{at} must be an object with role and content{hint}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DataError(f"{at}.role is {role!r}; allowed: {', '.join(ROLES)}{hint}")
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{at}.content must be a non-empty string{hint}")
        if role == "system" and i != 0:
            raise DataError(f"{at}: a system message may only come first{hint}")
        if role == "assistant" and not any(m["role"] == "user" for m in out):
            raise DataError(
                f"{at}: the conversation starts with the assistant's turn; the "
                f"first turn (after an optional system message) is the user's{hint}"
            )
        out.append({"role": role, "content": content})
    if require_output and not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: {name!r} has no assistant turn to learn from{hint}")
    return tuple(out)


def split_indices(
    n: int, *, val_fraction: float, seed: int, source: str, min_val: int = 1
) -> tuple[list[int], list[int]]:
    """(training, validation) row numbers (0-based, each in file order) of a seeded random
    split of n rows; the validation part gets at least `min_val` rows."""
    if n < 2:
        raise DataError(
            f"{source}: only {n} row; need at least 2 to split off validation rows, or pass "
            "--val FILE"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = max(min_val, round(n * val_fraction))
    n_val = min(n_val, n - 1)
    val = sorted(order[:n_val])
    taken = set(val)
    return [i for i in range(n) if i not in taken], val


def record_key(record: Record) -> tuple:
    """A record's content, without where it came from: equal keys are duplicate rows."""
    return (
        record.input,
        record.output,
        tuple((m["role"], m["content"]) for m in record.messages) if record.messages else None,
        record.text,
    )


MAX_DEPTH = 64  # nesting of a row's JSON (objects and lists) that no data format needs


def check_readable(path: Path) -> None:
    """Refuse, before anything is read, what is not a regular file or a directory: a device
    (/dev/zero never ends), a FIFO (opening it waits for a writer), a socket."""
    import stat

    mode = path.stat().st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = (
        "a character device" if stat.S_ISCHR(mode)
        else "a block device" if stat.S_ISBLK(mode)
        else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "not a regular file"
    )  # fmt: skip
    raise DataError(f"{path}: is {kind}, not a data file; give a {FILE_TYPES} file")


def _depth(obj) -> int:
    """How deeply JSON objects and lists nest in `obj` (iteratively: no recursion limit)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend(
                    (x, d + 1) for x in (item.values() if isinstance(item, dict) else item)
                )
    return deepest


def fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes (of a directory's files, by relative path), for the manifest
    and the resume check."""
    import hashlib

    path = Path(path)
    check_readable(path)
    if not path.is_dir():
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def write_records(path: str | Path, records: Iterable[Record]) -> None:
    """Write records as JSONL in gentune's own field names (with their source row)."""
    write_jsonl(path, (_row(r) for r in records))


def _row(r: Record) -> dict:
    fields = (
        ("input", r.input),
        ("output", r.output),
        ("messages", list(r.messages) if r.messages else None),
        ("text", r.text),
    )
    return {**{k: v for k, v in fields if v is not None}, "source": r.where}
