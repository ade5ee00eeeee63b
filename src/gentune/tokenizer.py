"""A model's tokenizer with the special tokens gentune needs, and the pair of tokenizers of an
encoder-decoder warm-started from two checkpoints with different vocabularies (a RoBERTa
encoder with a GPT-2 decoder): sources through the encoder's, targets and output through the
decoder's.

A pair is saved as the encoder's tokenizer in the model directory (what `tokenizer(text)` of a
user who loads it should run) and the decoder's in its `decoder_tokenizer/` folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DECODER_DIR = "decoder_tokenizer"


def load_tokenizer(where: str | Path):
    """The tokenizer of a model directory or hub id (a `PairTokenizer` where the directory
    holds a decoder's tokenizer of its own)."""
    if Path(where, DECODER_DIR).is_dir():
        return PairTokenizer(_single(where), _single(Path(where, DECODER_DIR)))
    return _single(where)


def _single(where: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(where)
    if tokenizer.eos_token is None and tokenizer.sep_token is not None:
        tokenizer.eos_token = tokenizer.sep_token  # BERT-like: [SEP] ends a sequence
    if tokenizer.bos_token is None and tokenizer.cls_token is not None:
        tokenizer.bos_token = tokenizer.cls_token
    if tokenizer.pad_token_id is None:
        # Padding positions are masked by attention_mask and labels are built explicitly,
        # so reusing EOS as pad is safe here (EOS is still trained where it ends a target).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class PairTokenizer:
    """Two tokenizers used as one: `tokenizer(text)` tokenizes a source with the encoder's,
    `tokenizer(text_target=...)` a target with the decoder's; every other attribute (special
    tokens, decode, vocabulary, length) is the decoder's, since it is what generates."""

    def __init__(self, source, target):
        self.source_tokenizer = source
        self.target_tokenizer = target

    def __call__(self, text=None, text_target=None, **kwargs):
        if text_target is not None:
            if text is not None:
                raise ValueError("PairTokenizer: tokenize a source or a target, not both")
            return self.target_tokenizer(text_target, **kwargs)
        return self.source_tokenizer(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in ("source_tokenizer", "target_tokenizer"):  # not yet set (unpickling)
            raise AttributeError(name)
        return getattr(self.target_tokenizer, name)

    def __len__(self) -> int:
        return len(self.target_tokenizer)

    def save_pretrained(self, path: str | Path, **kwargs) -> None:
        self.source_tokenizer.save_pretrained(path, **kwargs)
        self.target_tokenizer.save_pretrained(Path(path, DECODER_DIR), **kwargs)


def source_tokenizer(tokenizer):
    """The tokenizer of sources (an encoder's inputs): the pair's encoder side, else itself."""
    return tokenizer.source_tokenizer if isinstance(tokenizer, PairTokenizer) else tokenizer


def source_pad_id(tokenizer) -> int:
    """The id that pads sources: within the encoder's vocabulary (masked out all the same)."""
    return source_tokenizer(tokenizer).pad_token_id
