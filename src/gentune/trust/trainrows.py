"""A run's own training rows, for the checks that compare with them (memorisation, distance to
the training data): --train, else the files the run's manifest names, where their content is
still what the run recorded (sha256), less the rows training held out for validation."""

from __future__ import annotations

import json
from pathlib import Path

from gentune.data.records import Record, fingerprint, read_records
from gentune.data.tasks import get_task


def training_rows(
    run: str | Path | None, given: str | None, loaded, template, log
) -> list[Record] | None:
    """The training rows (see the module); None (said) where there are none."""
    kind = get_task(template.task).kind
    if given:
        return read_records(given, kind=kind, require_output=False)
    if run is None:
        return None
    run = Path(run)
    files = (loaded.manifest or {}).get("data") or []
    val = _val_path(run)
    rows: list[Record] = []
    for k, entry in enumerate(files):
        path = Path(entry["path"])
        role = entry.get("role", "val" if str(path) == val else "data" if k == 0 else "more")
        if role == "val":
            continue
        if not path.exists() or fingerprint(path) != entry["sha256"]:
            log(
                f"gentune: note: the run's training file {path} is missing or changed since "
                "training: what compares with the training rows is skipped (give --train FILE)"
            )
            return None
        part = read_records(str(path), kind=kind, require_output=False)
        if role == "data":  # less the rows split off it for validation, by row number
            held = heldout_rows(run)
            part = [r for r in part if r.row not in held]
        rows += part
    return rows or None


def heldout_rows(run: Path) -> set[int]:
    """Row numbers of the first data file that training held out (RUN/heldout.jsonl's
    sources, file:row)."""
    try:
        lines = (run / "heldout.jsonl").read_text().splitlines()
    except OSError:
        return set()
    return {int(json.loads(line)["source"].rsplit(":", 1)[1]) for line in lines if line.strip()}


def _val_path(run: Path) -> str | None:
    """The run's --val file, resolved (runs written before the manifest named roles)."""
    try:
        val = json.loads((run / "train_config.json").read_text()).get("val")
    except (OSError, ValueError):
        return None
    return str(Path(val).resolve()) if val else None
