"""One small frozen config per command; every field documented, validated once, all problems
reported together."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from . import DEFAULT_MODEL
from .tasks import TASKS


class ConfigError(ValueError):
    """Invalid settings; the message lists every problem."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    task: str  # summarization | translation | dialogue | text
    data: str  # training file (.jsonl/.csv/.tsv/.txt)
    out: str  # run directory to write
    val: str | None = None  # validation file; default: split off from --data
    val_fraction: float = 0.1  # share of --data held out when --val is not given
    model: str = DEFAULT_MODEL  # embedded name, local directory or hub id
    method: Literal["lora", "full"] = "lora"  # LoRA adapter or full fine-tuning
    epochs: float = 3.0  # passes over the training data
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: int = 8  # examples per optimizer step (micro_batch_size × accumulation)
    micro_batch_size: int | None = None  # examples per forward pass; default = batch_size
    lr: float | None = None  # peak learning rate; default 1e-3 for LoRA, 5e-5 for full
    warmup_ratio: float = 0.1  # share of steps with linear warmup
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warmup
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    max_length: int = 1024  # tokens per example; inputs are shortened to fit, never targets
    skip_long_targets: bool = False  # drop (and count) rows whose target cannot fit
    skip_invalid: bool = False  # drop (and count) invalid rows instead of stopping
    seed: int = 42  # seeds data order, split, init and dropout
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator
    lora_dropout: float = 0.05  # dropout on LoRA inputs
    instruction: str | None = None  # replaces the task's default instruction
    system: str | None = None  # system message for chat templates
    template: Literal["auto", "chat", "plain"] = "auto"  # prompt layout
    source_lang: str | None = None  # translation: source language name
    target_lang: str | None = None  # translation: target language name
    input_field: str = "input"  # column holding the input
    output_field: str = "output"  # column holding the target
    messages_field: str = "messages"  # column holding chat messages
    text_field: str = "text"  # column holding free text
    eval_every_epoch: bool = True  # validation loss/perplexity after every epoch
    progress: bool = True  # progress bar

    def __post_init__(self):
        problems = []
        if self.task not in TASKS:
            problems.append(f"task={self.task!r}: choose one of {', '.join(TASKS)}")
        if self.method not in ("lora", "full"):
            problems.append(f"method={self.method!r}: choose lora or full")
        if self.epochs <= 0:
            problems.append(f"epochs={self.epochs}: must be > 0")
        if self.max_steps is not None and self.max_steps <= 0:
            problems.append(f"max_steps={self.max_steps}: must be > 0")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size}: must be >= 1")
        mb = self.micro_batch_size
        if mb is not None and (mb < 1 or self.batch_size % mb):
            problems.append(f"micro_batch_size={mb}: must divide batch_size={self.batch_size}")
        if self.lr is not None and not 0 < self.lr < 1:
            problems.append(f"lr={self.lr}: must be in (0, 1)")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
        if not 0 < self.val_fraction < 1:
            problems.append(f"val_fraction={self.val_fraction}: must be in (0, 1)")
        if self.max_length < 16:
            problems.append(f"max_length={self.max_length}: must be >= 16")
        if self.lora_r < 1:
            problems.append(f"lora_r={self.lora_r}: must be >= 1")
        if self.scheduler not in ("cosine", "linear", "constant"):
            problems.append(f"scheduler={self.scheduler!r}: choose cosine, linear or constant")
        if self.template not in ("auto", "chat", "plain"):
            problems.append(f"template={self.template!r}: choose auto, chat or plain")
        if self.task == "translation" and not (self.source_lang and self.target_lang) \
                and self.instruction is None:
            problems.append("task=translation needs source_lang and target_lang "
                            "(e.g. --source-lang German --target-lang English)")
        if problems:
            raise ConfigError("invalid training settings:\n  - " + "\n  - ".join(problems))

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.method == "lora" else 5e-5)

    @property
    def micro(self) -> int:
        return self.micro_batch_size or self.batch_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(unknown)}")
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class Decoding:
    max_new_tokens: int = 128  # tokens generated at most
    do_sample: bool = False  # sample instead of greedy / beam search
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling
    top_k: int = 0  # top-k sampling (0 = off)
    num_beams: int = 1  # beam search width
    repetition_penalty: float = 1.0  # >1 discourages repeats
    seed: int = 0  # seeds sampling

    def __post_init__(self):
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens}: must be >= 1")
        if self.temperature <= 0:
            problems.append(f"temperature={self.temperature}: must be > 0")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p}: must be in (0, 1]")
        if self.num_beams < 1:
            problems.append(f"num_beams={self.num_beams}: must be >= 1")
        if problems:
            raise ConfigError("invalid decoding settings:\n  - " + "\n  - ".join(problems))
