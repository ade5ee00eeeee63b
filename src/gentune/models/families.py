"""Every model family's quirks in one table (`FAMILIES`), and what a model is: causal or
encoder-decoder, multilingual codes, the module under any wrapper. No `if "gpt2" in name`
anywhere else."""

from __future__ import annotations

from dataclasses import dataclass

from gentune.errors import ConfigError


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
    return family_of(getattr(getattr(model, "config", None), "model_type", ""))


def family_of(model_type: str) -> Family:
    """The quirks entry for a config's model_type (a family not in the table: the defaults)."""
    return FAMILIES.get(model_type, _OTHER)


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


def causal_lm(model):
    """The transformers *ForCausalLM under any peft / accelerate wrapper."""
    inner = getattr(model, "module", model)  # DDP
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    return inner


def is_sharded(model) -> bool:
    """Whether the model (under any wrapper) was sharded with FSDP2 (`distributed.shard`)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(causal_lm(model), FSDPModule)
