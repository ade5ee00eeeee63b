"""Loading a model by name, directory or hub id (causal or encoder-decoder; `bert2bert:` warm
starts), with a load that would leave weights random stopped; LoRA adapters; precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gentune import DEFAULT_MODEL
from gentune.errors import ConfigError, ModelError
from gentune.models.families import (
    CROSS_ATTENTION,
    UNUSED_WEIGHTS,
    WARM_START,
    family,
    family_of,
    is_seq2seq,
)
from gentune.models.registry import resolve_model
from gentune.tokenizer import PairTokenizer, load_tokenizer


def load_model(spec: str, *, dtype: torch.dtype = torch.float32):
    """(model, tokenizer, resolved path or id) for a model name, directory or hub id: a causal
    LM, or an encoder-decoder where the config says so; `bert2bert:ENCODER[,DECODER]` warm-starts
    an encoder-decoder from encoder checkpoints. A load that leaves weights newly initialised
    stops and names them."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    _attention_backends()
    if spec.startswith(WARM_START):
        return _warm_start(spec, dtype)
    where = resolve_model(spec)
    with _loading(spec, where):
        tokenizer = load_tokenizer(where)
        config = AutoConfig.from_pretrained(where)
        if family_of(config.model_type).encoder_only:
            raise ModelError(
                f"{spec} is an encoder-only model ({config.model_type}): it cannot generate "
                f"text by itself; give --model {WARM_START}{spec} to add a decoder warm-started "
                f"from it (or {WARM_START}{spec},DECODER for another decoder)"
            )
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        loaded: Any = auto.from_pretrained(where, dtype=dtype, output_loading_info=True)
        model, info = loaded
    _check_loaded(spec, model, info)
    return model, tokenizer, where


def _attention_backends() -> None:
    """On a GPU, keep PyTorch's attention (SDPA) off cuDNN: torch 2.5+ sends masked bf16
    attention to cuDNN first on Hopper and newer, and cuDNN builds a new plan (0.4-1 s) for every
    shape it has not seen, which gentune's length-grouped batches and every decoding step of
    `generate` are. On an H200 (torch 2.11), with cuDNN on, the profile of bf16 decoding showed
    cuDNN attention, bf16 training steps at a new batch shape took 1.7-2.4 s against 0.15 s, and
    bf16 generation ran at 0.4x fp32's tokens/s. Flash and memory-efficient attention, next in
    PyTorch's order, build nothing per shape."""
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)


class _loading:
    """Errors of loading a model, as one line that says what to do."""

    def __init__(self, spec: str, where: str):
        self.spec, self.where = spec, where

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        # transformers' own report of missing weights: gentune checks them and says what to do
        self.verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        return self

    def __exit__(self, kind, e, tb):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self.verbosity)
        if e is None or isinstance(e, ModelError) or not isinstance(e, Exception):
            return False
        if Path(self.where).is_dir():
            raise ModelError(
                f"{self.where}: cannot load the model ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:300] if str(e) else ''}); check that "
                "it is a complete transformers model directory"
            ) from None
        if not isinstance(e, OSError):
            return False
        raise ModelError(
            f"cannot load model {self.spec!r}: it is not cached here and the Hugging Face Hub "
            f"could not be reached ({str(e).splitlines()[0][:200]}). Offline options: "
            f"--model {DEFAULT_MODEL} (the embedded default), a local model directory, or "
            f"download it once where there is internet (`hf download {self.spec}`) and "
            "set HF_HUB_OFFLINE=1"
        ) from None


def _check_loaded(spec: str, model, info: dict, *, expected: tuple[str, ...] = ()) -> None:
    """Stop when loading left weights newly initialised (random): a checkpoint of another
    architecture, or a head it does not have. `expected` names the ones that are meant to be
    new (the cross-attention of a warm start)."""
    tied: set[str] = set()
    if getattr(model.config, "tie_word_embeddings", False) or is_seq2seq(model):
        tied = {
            name for name in info.get("missing_keys", ()) if "embed" in name or "lm_head" in name
        }
        tied = {name for name in tied if _is_tied(model, name)}
    new = sorted(
        k
        for k in info.get("missing_keys", ())
        if k not in tied and not any(e in k for e in expected) and UNUSED_WEIGHTS not in k
    )
    if new:
        raise ModelError(
            f"{spec}: {len(new)} weights are not in the checkpoint and would start random "
            f"({', '.join(new[:4])}{' ...' if len(new) > 4 else ''}): it is not a "
            f"{type(model).__name__} checkpoint; give a model of that kind"
        )


def _is_tied(model, name: str) -> bool:
    """Whether parameter `name` shares its storage with another one (tied embeddings)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(name)
    return target is not None and any(p is target for n, p in params.items() if n != name)


def _warm_start(spec: str, dtype: torch.dtype):
    """An EncoderDecoderModel from an encoder checkpoint and a decoder checkpoint (the same
    one by default), with cross-attention added (new, trained from scratch) and the decoder's
    special tokens set: it starts with CLS/BOS (else EOS), ends with SEP/EOS, pads with PAD. Where the
    two tokenizers differ, sources go through the encoder's and targets through the
    decoder's (a `PairTokenizer`)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, EncoderDecoderModel

    names = [n.strip() for n in spec[len(WARM_START) :].split(",")]
    if not names[0] or len(names) > 2 or not all(names):
        raise ModelError(
            f"--model {spec}: give {WARM_START}ENCODER or {WARM_START}ENCODER,DECODER "
            f"(e.g. {WARM_START}bert-base-uncased)"
        )
    encoder_name, decoder_name = names[0], names[-1]
    enc_where, dec_where = resolve_model(encoder_name), resolve_model(decoder_name)
    with _loading(encoder_name, enc_where):
        tokenizer = load_tokenizer(enc_where)
        encoder, enc_info = AutoModel.from_pretrained(
            enc_where, dtype=dtype, output_loading_info=True, add_pooling_layer=False
        )
    _check_loaded(encoder_name, encoder, enc_info)
    with _loading(decoder_name, dec_where):
        if decoder_name != encoder_name:
            other = load_tokenizer(dec_where)
            if other.get_vocab() != tokenizer.get_vocab():  # e.g. RoBERTa → GPT-2
                tokenizer = PairTokenizer(tokenizer, other)
        config = AutoConfig.from_pretrained(dec_where, is_decoder=True, add_cross_attention=True)
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            dec_where, config=config, dtype=dtype, output_loading_info=True
        )
        decoder, dec_info = loaded
    _check_loaded(decoder_name, decoder, dec_info, expected=CROSS_ATTENTION)
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    # a decoder without BOS (GPT-2-like) starts from EOS, as BART's does
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    model.config.decoder_start_token_id = start
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.vocab_size = decoder.config.vocab_size
    model.generation_config.decoder_start_token_id = start
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, spec


def context_length(model) -> int:
    """The model's context in tokens, from its config (2048 when it does not say)."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def wrap_lora(
    model, *, r: int, alpha: int, dropout: float, new: tuple[str, ...] = (), targets: str = "auto"
):
    """The model with LoRA adapters on `targets`: "auto" (the family's target modules),
    "all-linear" or module names, comma-separated (peft). Modules named by `new` (a warm
    start's cross-attention, which starts random) are trained in full instead (peft's
    modules_to_save): adapters on random weights would leave them random."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    fam = family(model)
    modules: str | list[str] = (
        fam.lora_targets if isinstance(fam.lora_targets, str) else list(fam.lora_targets)
    )
    if targets != "auto":
        modules = lora_target_names(model, targets)
    if new:  # every linear layer but the new ones and the output head, by full name
        head = model.get_output_embeddings()
        modules = [
            name
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear | Conv1D)
            and module is not head
            and not any(part in new for part in name.split("."))
        ]
    config = LoraConfig(
        task_type="SEQ_2_SEQ_LM" if is_seq2seq(model) else "CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=modules,
        fan_in_fan_out=fam.fan_in_fan_out,
        modules_to_save=list(new) or None,
    )
    import warnings

    with warnings.catch_warnings():  # peft sets fan_in_fan_out per layer (GPT-2's Conv1D)
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set")
        return get_peft_model(model, config)


def lora_target_names(model, targets: str) -> str | list[str]:
    """--lora-targets as peft's target_modules: "all-linear", or the comma list of module
    names, each of which must name a linear layer of the model (else a ConfigError that lists
    the names there are)."""
    from transformers.pytorch_utils import Conv1D

    if targets == "all-linear":
        return targets
    names = [t.strip() for t in targets.split(",") if t.strip()]
    linear = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D)
        and module is not model.get_output_embeddings()
    }
    unknown = [n for n in names if n not in linear]
    if unknown or not names:
        raise ConfigError(
            f"lora_targets={targets!r}: {', '.join(unknown) or 'no names'} not among the model's "
            f"linear layers ({', '.join(sorted(linear))}), all-linear or auto"
        )
    return names


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
