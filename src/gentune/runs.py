"""The run directory: what `gentune train` writes and what generate / evaluate load.

    RUN/
      model/              adapter (LoRA) or full weights, as safetensors, plus the tokenizer
      template.json       the prompt template, used verbatim at inference
      train_config.json   the resolved training settings
      manifest.json       base model, package versions, data fingerprints, seed, statistics
      metrics.csv         one row per optimizer step (and validation after each epoch)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .data import fingerprint
from .models import ModelError, load_model
from .tasks import PromptTemplate

PACKAGES = ("gentune", "torch", "transformers", "peft", "accelerate", "safetensors",
            "tokenizers", "rouge-score", "sacrebleu", "numpy")


def package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def save_run(out: Path, *, model, tokenizer, template: PromptTemplate, cfg, base_model: str,
             data_files: list[str], stats: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=out))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if (out / "model").exists():
            shutil.rmtree(out / "model")
        os.replace(tmp, out / "model")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    template.save(out / "template.json")
    write_json(out / "train_config.json", cfg.to_dict())
    write_json(out / "manifest.json", {
        "gentune_run": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": cfg.method,
        "task": cfg.task,
        "base_model": cfg.model,
        "base_model_resolved": base_model,
        "seed": cfg.seed,
        "data": [{"path": str(Path(p).resolve()), "sha256": fingerprint(p)} for p in data_files],
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "stats": stats,
    })


def is_run(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").exists() and (Path(path) / "template.json").exists()


@dataclass
class Loaded:
    model: object
    tokenizer: object
    template: PromptTemplate | None  # None for a plain model: build one from the task
    name: str  # what was asked for
    manifest: dict | None = None


def load_for_inference(spec: str, *, merge: bool = True) -> Loaded:
    """A run directory (with its saved template) or any model name / directory / hub id."""
    path = Path(spec)
    if path.is_dir() and (path / "manifest.json").exists():
        missing = [p for p in ("template.json", "model") if not (path / p).exists()]
        if missing:
            raise ModelError(f"{path}: incomplete run directory (missing {', '.join(missing)}); "
                             "the training may have been interrupted: train it again")
        manifest = json.loads((path / "manifest.json").read_text())
        template = PromptTemplate.load(path / "template.json")
        if manifest["method"] == "lora":
            from peft import PeftModel

            base, _, _ = load_model(manifest["base_model"])
            model = PeftModel.from_pretrained(base, path / "model")
            if merge:  # faster generation; identical outputs up to float rounding
                model = model.merge_and_unload()
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path / "model")
        else:
            model, tokenizer, _ = load_model(str(path / "model"))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        return Loaded(model, tokenizer, template, spec, manifest)
    model, tokenizer, where = load_model(spec)
    model.eval()
    template = None
    exported = Path(where) / "gentune_template.json"
    if exported.exists():  # a directory written by `gentune export`: its template comes along
        template = PromptTemplate.load(exported)
    return Loaded(model, tokenizer, template, spec)
