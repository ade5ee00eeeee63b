"""Tiny random encoder-decoder (and encoder-only) models built from configs, with tokenizers
trained in-process: BART, T5, Marian, and a BERT encoder (for bert2bert warm starts)."""

from __future__ import annotations

from pathlib import Path

from .conftest import CORPUS, byte_level_bpe

DIGITS = " ".join(str(i) for i in range(100))


def _tokenizer(family: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if family == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials)
        tok.train_from_iterator([*CORPUS, DIGITS] * 5, trainer)
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    # T5 and Marian: <pad> first (the decoder starts with it), "$A </s>"; BART: "<s> $A </s>"
    tok = byte_level_bpe([*CORPUS, DIGITS], ["<pad>", "</s>", "<unk>", "<s>"], unk="<unk>")
    eos, bos = tok.token_to_id("</s>"), tok.token_to_id("<s>")
    single = "<s> $A </s>" if family == "bart" else "$A </s>"
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>" if family == "bart" else None,
    )


def _mbart50_tokenizer():
    """A tiny mBART-50 tokenizer (Unigram pieces of the test corpus' words and letters; the
    fifty language codes are added by the class itself)."""
    from transformers import MBart50TokenizerFast

    words = sorted({w.lower() for text in [*CORPUS, DIGITS] for w in text.split()})
    letters = sorted({c for text in CORPUS for c in text.lower() if not c.isspace()})
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0) for w in words] + [(c, -5.0) for c in [*letters, "\u2581"]]
    return MBart50TokenizerFast(vocab=vocab, src_lang="en_XX", tgt_lang="en_XX")


def _nllb_tokenizer():
    """A tiny NLLB tokenizer (BPE without merges: letters, digits and punctuation of the test
    corpus; the two hundred language codes are added by the class itself)."""
    from transformers import NllbTokenizer

    chars = sorted({c for text in [*CORPUS, DIGITS] for c in text.lower() if not c.isspace()})
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "\u2581": 4}
    vocab.update({c: i for i, c in enumerate(chars, start=5)})
    return NllbTokenizer(vocab=vocab, merges=[], src_lang="eng_Latn", tgt_lang="eng_Latn")


def build_seq2seq(
    path: Path, family: str, *, size: int = 32, layers: int = 2, varied: bool = True
) -> Path:
    """Save a tiny random `family` model (bart, t5, marian, mbart50, nllb, bert) with its
    tokenizer. `varied`:
    weights initialised larger than the family's default, so that greedy outputs vary (at the
    default scale a random model's first token is EOS); False for models that learn."""
    import torch
    from transformers import (
        AutoModelForMaskedLM,
        AutoModelForSeq2SeqLM,
        BartConfig,
        BertConfig,
        M2M100Config,
        MarianConfig,
        MBartConfig,
        T5Config,
    )

    torch.manual_seed(0)
    special = {"mbart50": _mbart50_tokenizer, "nllb": _nllb_tokenizer}
    tok = special[family]() if family in special else _tokenizer(family)
    common = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id}
    if family == "bert":
        config = BertConfig(
            **common,
            hidden_size=size,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=2 * size,
            max_position_embeddings=128,
            initializer_range=0.3 if varied else 0.02,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        model = AutoModelForMaskedLM.from_config(config)
    else:
        if family == "t5":
            config = T5Config(
                **common,
                d_model=size,
                d_kv=size // 4,
                d_ff=2 * size,
                num_layers=layers,
                num_heads=4,
                relative_attention_num_buckets=16,
                initializer_factor=5.0 if varied else 1.0,
                dropout_rate=0.0,
                eos_token_id=tok.eos_token_id,
                decoder_start_token_id=tok.pad_token_id,
            )
        else:
            cls = {
                "bart": BartConfig,
                "marian": MarianConfig,
                "mbart50": MBartConfig,
                "nllb": M2M100Config,
            }[family]
            config = cls(
                **common,
                d_model=size,
                encoder_layers=layers,
                decoder_layers=layers,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=2 * size,
                decoder_ffn_dim=2 * size,
                max_position_embeddings=128,
                init_std=0.3 if varied else 0.02,
                dropout=0.0,
                attention_dropout=0.0,
                activation_dropout=0.0,
                eos_token_id=tok.eos_token_id,
                bos_token_id=tok.bos_token_id if family != "marian" else None,
                forced_eos_token_id=None,
                decoder_start_token_id=(
                    tok.eos_token_id if family in ("bart", "nllb") else tok.pad_token_id
                ),
            )
        model = AutoModelForSeq2SeqLM.from_config(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
