"""Any model spec for inference: a run directory (its saved template and tokenizer) or a model
name / directory / hub id, in the precision asked for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gentune.data.tasks import PromptTemplate, build_template, get_task
from gentune.errors import GentuneError, RunError, UsageError
from gentune.models.families import set_languages, template_options
from gentune.models.load import load_model, resolve_precision
from gentune.rundir import interrupted, read_manifest, run_state
from gentune.tokenizer import load_tokenizer


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
