"""rundir"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Protocol

from gentune.checkpoint import latest
from gentune.errors import RunError, check_keys, read_json_object
from gentune.lock import LOCK_NAME

# what a manifest holds; a run whose manifest lacks these (or has others) is not loaded
MANIFEST_REQUIRED = ("gentune_run", "method", "task", "base_model")


MANIFEST_KEYS = {
    *MANIFEST_REQUIRED,
    "created",
    "base_model_resolved",
    "seed",
    "data",
    "versions",
    "python",
    "platform",
    "stats",
}


# files that mark a directory as a gentune run (complete or not)
RUN_MARKERS = ("train_config.json", "manifest.json", "checkpoints", "template.json")


PACKAGES = (
    "gentune",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "safetensors",
    "tokenizers",
    "rouge-score",
    "sacrebleu",
    "numpy",
)


def package_versions() -> dict[str, str | None]:
    """The versions of the packages a run depends on (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def strict(obj):
    """`obj` with every NaN or infinite float replaced by None (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (a temporary file renamed into place): a reader never
    takes a half-written file for the whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    """Write strict JSON (no NaN: undefined values are null) atomically."""
    write_text(
        path,
        json.dumps(strict(obj), indent=2, ensure_ascii=False, default=str, allow_nan=False) + "\n",
    )


def write_jsonl(path: str | Path, rows) -> Path:
    """Write rows (dicts) as JSON lines, creating the folder, atomically (a temporary file
    renamed into place: a reader never takes a half-written file for the whole); returns the
    path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


class Saves(Protocol):
    """What the run directory needs of a prompt template: that it saves itself."""

    def save(self, path: Path) -> None: ...


def save_run(
    out: Path,
    *,
    model,
    tokenizer,
    template: Saves,
    run: dict,
    base_model: str,
    data_files: dict[str, tuple[str, str]],
    stats: dict,
    weights: dict | None = None,
) -> None:
    """Write the run directory; `run` holds its method, task, base_model (as given) and seed;
    `data_files` maps each data file's role (data, data:2, …, val) to its path and sha256;
    `weights`, where given, are the model's full weights (gathered from a sharded model)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=out))
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        if (out / "model").exists():
            shutil.rmtree(out / "model")
        os.replace(tmp, out / "model")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    template.save(out / "template.json")
    manifest = {
        "gentune_run": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": run["method"],
        "task": run["task"],
        "base_model": run["base_model"],
        "base_model_resolved": base_model,
        "seed": run["seed"],
        "data": [
            {"role": role, "path": str(Path(p).resolve()), "sha256": sha}
            for role, (p, sha) in data_files.items()
        ],
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "stats": stats,
    }
    assert set(manifest) == MANIFEST_KEYS  # what read_manifest accepts is what is written
    write_json(out / "manifest.json", manifest)  # last: the run is complete once this exists


def run_state(path: str | Path) -> str | None:
    """ "complete", "interrupted" (training started, the run never finished) or None (no run)."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "manifest.json").exists():
        return "complete"
    if any((path / m).exists() for m in RUN_MARKERS):
        return "interrupted"
    return None


def is_run(path: str | Path) -> bool:
    """True for a complete run directory."""
    return run_state(path) == "complete"


def resume_hint(path: str | Path) -> str:
    """The command that continues an interrupted run."""
    return f"gentune train --config {Path(path) / 'train_config.json'} --resume"


def interrupted(path: str | Path) -> RunError:
    """The error for an interrupted run: its last checkpoint and the command that continues it."""
    last = latest(path)
    where = (
        f"last checkpoint: step {int(last.name.split('-')[-1])}" if last else "no checkpoint yet"
    )
    return RunError(
        f"{path}: interrupted run ({where}) — continue it with `{resume_hint(path)}`"
        " (or start it anew: add --overwrite)"
    )


def prepare_out(out: Path, *, resume: bool, overwrite: bool, main: bool = True) -> None:
    """Check --out before training writes anything: a file is refused; an existing run is
    continued only with --resume and replaced only with --overwrite (everything in it deleted
    first); a non-empty directory that is no run is never touched."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out}: is a file; give a directory for the run")
    if not out.is_dir() or not any(p.name != LOCK_NAME for p in out.iterdir()):
        return
    state = run_state(out)
    if state is None:
        raise RunError(
            f"--out {out}: the directory is not empty and holds no gentune run; "
            "choose a new or empty directory"
        )
    if overwrite:
        if main:  # everything but the lock this command holds
            for p in out.iterdir():
                if p.name == LOCK_NAME:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        return
    if not resume:
        raise RunError(
            f"--out {out}: already holds a{'n' if state == 'interrupted' else ''} "
            f"{state} run; add --resume to continue it, --overwrite to delete it "
            "and start again, or choose another --out"
        )


def read_manifest(path: Path) -> dict:
    """The run's manifest, checked for the keys gentune needs (a damaged one is named)."""
    manifest = read_json_object(path / "manifest.json", "manifest")
    check_keys(path / "manifest.json", manifest, MANIFEST_REQUIRED, MANIFEST_KEYS)
    if manifest["method"] not in ("lora", "full"):
        raise RunError(
            f"{path / 'manifest.json'}: method {manifest['method']!r} is not lora or "
            "full; the run directory is damaged"
        )
    return manifest


SAMPLES = "samples.jsonl"  # the outputs at every validation (training/samples.py)


def read_samples(run_dir: str | Path) -> list[dict]:
    """The run's samples.jsonl rows ([] where it has none or the file is unreadable)."""
    try:
        lines = (Path(run_dir) / SAMPLES).read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        return []


def read_log(run_dir: str | Path) -> list[dict]:
    """The run's metrics.csv: one dict per optimizer step (values as strings)."""
    with (Path(run_dir) / "metrics.csv").open() as f:
        return list(csv.DictReader(f))
