"""Tiny random models built from configs, with tokenizers trained in-process: no network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Summarize the following text. Translate the following text from German to English.",
    "A language model learns to predict the next token from the tokens before it.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Guten Morgen!",
    "### Input: ### Response: user assistant system hello world title paper abstract",
    "0123456789 ,.;:!?()[]{}'\"-_/\\@#$%^&*+=<>|~`",
]


def byte_level_bpe(texts: list[str], specials: list[str], unk: str | None = None):
    """A byte-level BPE tokenizer (GPT-2's kind) of 400 pieces trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts * 5, trainer)
    return tok


def _tokenizer(eos: str, chat: bool, pad_is_eos: bool):
    from transformers import PreTrainedTokenizerFast

    tok = byte_level_bpe(CORPUS, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, pad_token=eos if pad_is_eos else None
    )
    if chat:
        fast.chat_template = CHATML
    return fast


def build_tiny(path: Path, family: str) -> Path:
    """Save a tiny random model + tokenizer directory; 'llama' has a chat template and pad = EOS
    (the SmolLM2 trap), 'gpt2' is a plain base model without pad token."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    if family == "llama":
        tok = _tokenizer("<|im_end|>", chat=True, pad_is_eos=True)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
            bos_token_id=None,
        )
    else:
        tok = _tokenizer("<|endoftext|>", chat=False, pad_is_eos=False)
        config = GPT2Config(
            vocab_size=len(tok),
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=256,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.eos_token_id,
        )
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    return str(build_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> str:
    return str(build_tiny(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2"))


PAIRS = [
    {
        "input": "The quick brown fox jumps over the lazy dog near the river bank today.",
        "output": "Fox jumps dog.",
    },
    {"input": "A language model learns to predict the next token.", "output": "Model predicts."},
    {"input": "hello world", "output": "Greeting to the world, with a long answer here."},
    {"input": "Guten Morgen! Der schnelle braune Fuchs.", "output": "Good morning fox."},
    {"input": "title paper abstract about tokens and models and more tokens", "output": "Tokens."},
    {"input": "The lazy dog sleeps.", "output": "Dog sleeps."},
    {"input": "Summarize the following text please, it is short.", "output": "Short."},
    {"input": "0123456789 are digits", "output": "Digits 0-9."},
    {"input": "system user assistant roles", "output": "Roles."},
    {"input": "The river bank is near the dog.", "output": "River near dog."},
]


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return p


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_cfg(model: str, data, out, **kw):
    """A TrainConfig for a short run on a tiny model: summarization, quiet (no progress bar,
    no TensorBoard); `kw` sets the rest."""
    from gentune.config import TrainConfig

    base = dict(task="summarization", model=model, progress=False, tensorboard=False)
    return TrainConfig(**{**base, "data": str(data), "out": str(out), **kw})


@pytest.fixture(scope="session")
def trained_run(tiny_llama, tmp_path_factory) -> str:
    """A tiny model fully fine-tuned until it answers PAIRS' outputs (readable text, ~3 s)."""
    from gentune.training.train import train

    tmp = tmp_path_factory.mktemp("trained")
    data = write_jsonl(tmp / "d.jsonl", PAIRS * 4)
    cfg = tiny_cfg(
        tiny_llama,
        data,
        tmp / "run",
        method="full",
        max_steps=300,
        batch_size=4,
        lr=5e-3,
        eval_generate=0,
        moments="fp32",
    )  # fmt: skip  (fp32 moments: tests built on it rank tokens that hang on its exact weights)
    return str(train(cfg, log=lambda *_: None))


@pytest.fixture(scope="session")
def lora_run(tiny_llama, tmp_path_factory):
    """A tiny LoRA run of a few steps (LoRA named: `auto` trains a model this small in full)."""
    from gentune.training.train import train

    tmp = tmp_path_factory.mktemp("run")
    data = write_jsonl(tmp / "d.jsonl", PAIRS * 2)
    cfg = tiny_cfg(
        tiny_llama, data, tmp / "run", method="lora", max_steps=4, batch_size=4, lr=5e-3,
        eval_generate=2,
    )  # fmt: skip
    return train(cfg, log=lambda *_: None), data


@pytest.fixture(scope="session")
def loaded(trained_run):
    """The trained tiny run, loaded once for the server's tests."""
    from gentune.inference.load import load_for_inference

    return load_for_inference(trained_run)


def _data(tmp_path, n=40):
    rows = [
        PAIRS[i % len(PAIRS)] | {"input": PAIRS[i % len(PAIRS)]["input"] + f" #{i}"}
        for i in range(n)
    ]
    return write_jsonl(tmp_path / "data.jsonl", rows)


def _examples(path):
    """A tiny model, its tokenizer and eight encoded PAIRS."""
    from gentune.data.encode import encode_dataset
    from gentune.data.records import Record
    from gentune.data.tasks import build_template, get_task
    from gentune.models.load import load_model

    model, tok, _ = load_model(path)
    tpl = build_template(get_task("summarization"), tok)
    recs = [Record(source="d", row=i, **r) for i, r in enumerate(PAIRS[:8], start=1)]
    exs, _ = encode_dataset(recs, tpl, tok, max_length=128)
    return model, tok, exs
