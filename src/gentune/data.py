"""Reading user data: JSONL, CSV, TSV, chat records and plain text, validated row by row.

Every record keeps the file and row it came from, so that any later problem (a target that
cannot fit, say) can name them. Errors name file, row and field, and say what to do.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import DataError

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
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file (check the path given to --data/--val)")
    rows = _rows(path)
    report = report if report is not None else ReadReport(path=str(path))
    records = []
    for row_no, row in rows:
        try:
            records.append(
                _to_record(
                    str(path), row_no, row, kind=kind, fields=fields, require_output=require_output
                )
            )
        except DataError as e:
            if not skip_invalid:
                raise
            report.skipped.append(str(e).split(" (use --skip-invalid")[0])
    report.rows = len(records)
    if not records:
        raise DataError(f"{path}: no valid rows ({len(report.skipped)} skipped as invalid)")
    return records


FILE_TYPES = ".jsonl, .csv, .tsv, .txt or .parquet (text optionally compressed: .gz, .bz2, .xz)"


def _rows(path: Path):
    """(row number, row) pairs of a data file or a `datasets` directory."""
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
    raw, suffix = _read_bytes(path)
    text = _decode(path, raw)
    if not text.strip():
        raise DataError(f"{path}: the file is empty; it needs at least one row")
    if suffix in (".jsonl", ".json", ".ndjson"):
        return _jsonl_rows(path, text)
    if suffix in (".csv", ".tsv"):
        return _csv_rows(path, text, delimiter="," if suffix == ".csv" else "\t")
    if suffix in (".txt", ".text", ".md"):
        return _text_rows(text)
    raise DataError(f"{path}: unknown file type {suffix!r}; use {FILE_TYPES}")


def _parquet_rows(path: Path):
    """Rows of a Parquet file (numbered from 1), read with pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read it as Parquet ({e})") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: the file is empty; it needs at least one row")
    return list(enumerate(table.to_pylist(), start=1))


def _dataset_rows(path: Path):
    """Rows of a directory written by `datasets.Dataset.save_to_disk` (numbered from 1)."""
    from datasets import load_from_disk

    try:
        data = load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as e:
        raise DataError(f"{path}: cannot load it with datasets.load_from_disk ({e})") from None
    if len(data) == 0:
        raise DataError(f"{path}: the dataset is empty; it needs at least one row")
    return list(enumerate(data, start=1))


COMPRESSED = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}
_MAGIC = {
    b"\x1f\x8b": ".gz",
    b"BZh": ".bz2",
    b"\xfd7zXZ": ".xz",
    b"PK\x03\x04": ".zip",
    b"(\xb5/\xfd": ".zst",
    b"PAR1": ".parquet",
}


def _read_bytes(path: Path) -> tuple[bytes, str]:
    """The file's bytes, decompressed where its name ends in .gz/.bz2/.xz, and the suffix that
    says its format (data.jsonl.gz → .jsonl). Other archives are named, never misread."""
    import importlib

    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror})") from None
    suffix = path.suffix.lower()
    if suffix in COMPRESSED:
        module = importlib.import_module(COMPRESSED[suffix])
        try:
            raw = module.decompress(raw)
        except (OSError, EOFError, ValueError) as e:
            raise DataError(
                f"{path}: cannot decompress it as {suffix} ({e}); the file is "
                "damaged or not really compressed that way"
            ) from None
        return raw, Path(path.stem).suffix.lower()
    kind = next((k for magic, k in _MAGIC.items() if raw.startswith(magic)), None)
    if kind == ".parquet":
        raise DataError(f"{path}: the file is Parquet, not text; name it {path.stem}.parquet")
    if kind:
        hint = (
            f"rename it to {path.name}{kind}"
            if kind in COMPRESSED
            else "extract it first; gentune reads .gz, .bz2 and .xz directly"
        )
        raise DataError(f"{path}: the file is compressed ({kind[1:]}), not plain text; {hint}")
    return raw, suffix


_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


def _decode(path: Path, raw: bytes) -> str:
    for bom, encoding in _BOMS:  # UTF-16/32, as some editors (and Excel) save text
        if raw.startswith(bom):
            try:
                return raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}: starts with a {encoding.upper()} byte-order mark but "
                    f"byte {e.start} is not {encoding.upper()}; re-save the file as "
                    "UTF-8"
                ) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: byte 0x{raw[e.start]:02x} at column {col} is not UTF-8; "
            "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


def _jsonl_rows(path: Path, text: str):
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array of objects is accepted too
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
        yield from enumerate(data, start=1)
        return
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{line_no}: malformed JSON at column {e.colno}: {e.msg} "
                "(each line must be one JSON object)"
            ) from None


def _csv_rows(path: Path, text: str, delimiter: str):
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
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


def _text_rows(text: str):
    para: list[str] = []
    start = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not para:
                start = line_no
            para.append(line)
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


def split_train_val(
    records: list[Record], *, val_fraction: float, seed: int, min_val: int = 1
) -> tuple[list[Record], list[Record]]:
    """Seeded random split; the validation part gets at least `min_val` rows."""
    if len(records) < 2:
        raise DataError(
            f"{records[0].source}: only {len(records)} row; need at least 2 to split off "
            "validation rows, or pass --val FILE"
        )
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(min_val, round(len(records) * val_fraction))
    n_val = min(n_val, len(records) - 1)
    val_idx = set(order[:n_val])
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val


def record_key(record: Record) -> tuple:
    """A record's content, without where it came from: equal keys are duplicate rows."""
    return (
        record.input,
        record.output,
        tuple((m["role"], m["content"]) for m in record.messages) if record.messages else None,
        record.text,
    )


def fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes (of a directory's files, by relative path), for the manifest
    and the resume check."""
    import hashlib

    path = Path(path)
    if not path.is_dir():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def write_records(path: str | Path, records: list[Record]) -> None:
    """Write records as JSONL in gentune's own field names (with their source row)."""
    with Path(path).open("w") as f:
        for r in records:
            row = {
                k: v
                for k, v in (
                    ("input", r.input),
                    ("output", r.output),
                    ("messages", list(r.messages) if r.messages else None),
                    ("text", r.text),
                )
                if v is not None
            }
            row["source"] = r.where
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
