"""The run directory: what `gentune train` writes and what generate / evaluate load.

    RUN/
      model/              adapter (LoRA) or full weights, as safetensors, plus the tokenizer
      template.json       the prompt template, used verbatim at inference
      train_config.json   the resolved training settings
      manifest.json       base model, package versions, data fingerprints, seed, statistics
      metrics.csv         one row per optimizer step (and validation after each epoch)

`manifest.json` is written last: a directory without it is an interrupted run (or none), and
nothing loads it as a model. Training removes it first, so a continued run is never mistaken
for the finished one it started from.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import latest
from .errors import GentuneError, RunError, UsageError, check_keys, read_json_object
from .models import load_model, resolve_precision, set_languages, template_options
from .tasks import PromptTemplate, build_template, get_task
from .tokenizer import load_tokenizer

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


def write_json(path: Path, obj) -> None:
    """Write strict JSON (no NaN: undefined values are null) atomically (a temporary file
    renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(
        json.dumps(strict(obj), indent=2, ensure_ascii=False, default=str, allow_nan=False) + "\n"
    )
    os.replace(tmp, path)


def save_run(
    out: Path,
    *,
    model,
    tokenizer,
    template: PromptTemplate,
    cfg,
    base_model: str,
    data_files: dict[str, str],
    stats: dict,
    weights: dict | None = None,
) -> None:
    """Write the run directory; `data_files` maps each data file to its sha256; `weights`,
    where given, are the model's full weights (gathered from a sharded model)."""
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
    write_json(
        out / "manifest.json",
        {  # last: the run is complete once this exists
            "gentune_run": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "method": cfg.method,
            "task": cfg.task,
            "base_model": cfg.model,
            "base_model_resolved": base_model,
            "seed": cfg.seed,
            "data": [
                {"path": str(Path(p).resolve()), "sha256": sha} for p, sha in data_files.items()
            ],
            "versions": package_versions(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "stats": stats,
        },
    )


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
    if not out.is_dir() or not any(out.iterdir()):
        return
    state = run_state(out)
    if state is None:
        raise RunError(
            f"--out {out}: the directory is not empty and holds no gentune run; "
            "choose a new or empty directory"
        )
    if overwrite:
        if main:
            shutil.rmtree(out)
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


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    template: PromptTemplate | None  # None for a plain model: build one from the task
    name: str  # what was asked for
    manifest: dict | None = None


def load_for_inference(
    spec: str, *, merge: bool = True, precision: str = "fp32", quantize: str | None = None
) -> Loaded:
    """A run directory (with its saved template) or any model name / directory / hub id, its
    weights in `precision` (fp32; bf16 halves the memory read per generated token; auto: bf16
    where the hardware has native bf16), the linear layers' weights optionally quantized
    (`quantize="int8"`: torchao's int8 weight-only, a quarter of fp32's memory)."""
    loaded = _load(spec, merge=merge)
    resolved, _ = resolve_precision(precision)
    if resolved != "fp32":
        loaded.model.to({"bf16": torch.bfloat16, "fp16": torch.float16}[resolved])
    if torch.cuda.is_available():  # generation follows its inputs to the model's device
        loaded.model.to("cuda")
    if quantize:
        quantize_weights(loaded.model, quantize)
    return loaded


def quantize_weights(model, kind: str) -> None:
    """Weight-only quantization of every linear layer, in place, through torchao."""
    if kind != "int8":
        raise UsageError(f"--quantize {kind}: only int8 is supported")
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise UsageError(
            "--quantize int8 needs torchao: pip install torchao (or pip install 'gentune[quantize]')"
        ) from None
    quantize_(model, Int8WeightOnlyConfig())


def _load(spec: str, *, merge: bool) -> Loaded:
    path = Path(spec)
    state = run_state(path)
    if state == "interrupted":
        raise interrupted(path)
    if state == "complete":
        manifest = read_manifest(path)
        missing = [p for p in ("template.json", "model") if not (path / p).exists()]
        if missing:
            raise RunError(
                f"{path}: incomplete run directory (missing {', '.join(missing)}); "
                "the run directory is damaged: train it again (--overwrite)"
            )
        saved = PromptTemplate.load(path / "template.json")
        try:
            model, tokenizer = _load_run_model(path, manifest, merge=merge)
        except GentuneError:
            raise
        except Exception as e:  # noqa: BLE001 — whatever a damaged file makes the loaders raise
            raise RunError(
                f"{path / 'model'}: cannot load the trained model "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); the run "
                "directory is damaged: train it again (--overwrite) or restore it"
            ) from None
        model.eval()
        return Loaded(model, tokenizer, saved, spec, manifest)
    model, tokenizer, where = load_model(spec)
    model.eval()
    template: PromptTemplate | None = None
    exported = Path(where) / "gentune_template.json"
    if exported.exists():  # a directory written by `gentune export`: its template comes along
        template = PromptTemplate.load(exported)
    return Loaded(model, tokenizer, template, spec)


def _load_run_model(path: Path, manifest: dict, *, merge: bool):
    if manifest["method"] == "lora":
        from peft import PeftModel

        base, _, _ = load_model(manifest["base_model"])
        tokenizer = load_tokenizer(path / "model")
        model = PeftModel.from_pretrained(base, path / "model")
        if merge:  # faster generation; identical outputs up to float rounding
            model = model.merge_and_unload()
    else:
        model, tokenizer, _ = load_model(str(path / "model"))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def resolve_template(loaded: Loaded, task: str | None, **template_args) -> PromptTemplate:
    """The run's saved template, or one built for `task` from the model's tokenizer."""
    if loaded.template is not None:
        if task and task != loaded.template.task:
            raise UsageError(
                f"{loaded.name} was trained for task {loaded.template.task!r}, "
                f"not {task!r}; drop --task"
            )
        given = [f"--{k.replace('_', '-')}" for k, v in template_args.items() if v is not None]
        if given:  # never ignored: the model answers best to the prompt it was trained on
            raise UsageError(
                f"{loaded.name} has its own prompt template (template.json, the "
                f"prompt it was trained on); {', '.join(given)} would change it: "
                "drop the flag, or train a run with it"
            )
        return loaded.template
    if not task:
        raise UsageError(
            f"{loaded.name} is a plain model: name the task with --task "
            "(summarization, translation, dialogue, text)"
        )
    set_languages(
        loaded.model,
        loaded.tokenizer,
        template_args.get("source_lang"),
        template_args.get("target_lang"),
    )
    return build_template(
        get_task(task), loaded.tokenizer, **template_args, **template_options(loaded.model)
    )


def read_log(run_dir: str | Path) -> list[dict]:
    """The run's metrics.csv: one dict per optimizer step (values as strings)."""
    with (Path(run_dir) / "metrics.csv").open() as f:
        return list(csv.DictReader(f))
