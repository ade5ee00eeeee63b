"""One small frozen config per command; every field documented, validated once, all problems
reported together."""

from __future__ import annotations

import functools
import inspect
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from gentune import DEFAULT_MODEL
from gentune.errors import ConfigError
from gentune.metrics import METRICS, REFERENCE_METRICS

# the tasks by name; each one's template, metrics and decoding are in data.tasks.TASKS
TaskName = Literal["summarization", "translation", "dialogue", "text"]
TASKS = typing.get_args(TaskName)
MAX_LENGTH = 1024  # tokens per example, by default (and for a plain model at evaluation)


def _fail(what: str, problems: list[str]):
    raise ConfigError(f"invalid {what} settings: " + "; ".join(problems), problems)


def parse_spec(spec: str) -> tuple[str, float]:
    """("path", weight) of "path:weight"; a path without a numeric ":weight" has weight 1."""
    path, sep, tail = spec.rpartition(":")
    if sep and path:
        try:
            weight = float(tail)
        except ValueError:
            return spec, 1.0
        if not weight > 0 or weight == float("inf"):
            raise ConfigError(f"--data {spec}: the weight after ':' must be a number > 0")
        return path, weight
    return spec, 1.0


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    task: str  # summarization | translation | dialogue | text
    data: str | tuple[str, ...]  # training file(s); several as FILE:WEIGHT, mixed at those rates
    out: str  # run directory to write
    val: str | None = None  # validation file; default: split off from --data
    val_fraction: float = 0.1  # share of --data held out when --val is not given
    model: str = DEFAULT_MODEL  # embedded name, local directory or hub id
    method: Literal["auto", "lora", "full"] = "auto"  # auto: from the model size and memory
    epochs: float | None = None  # passes over the data; default: from the number of rows
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: int | None = None  # examples per optimizer step; default: from the rows (8 or 4)
    micro_batch_size: int | None = None  # examples per forward pass; default = batch_size
    micro_batch_tokens: int | None = None  # padded tokens per forward pass (CPU default 768)
    lr: float | None = None  # peak learning rate; default 1e-3 for LoRA, 1e-4 for full
    warmup_ratio: float = 0.1  # share of steps with linear warmup
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warmup
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    max_length: int = MAX_LENGTH  # tokens per example; inputs are shortened to fit, never targets
    skip_long_targets: bool = False  # drop (and count) rows whose target cannot fit
    skip_invalid: bool = False  # drop (and count) invalid rows instead of stopping
    seed: int = 42  # seeds data order, split, init and dropout
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator
    lora_targets: str = (
        "auto"  # modules LoRA adapts: auto (the family's), all-linear, or names (q_proj,v_proj)
    )
    lora_dropout: float = (
        0.0  # dropout on LoRA inputs (peft's default; 0.05 costs ~15 % of CPU step time)
    )
    instruction: str | None = None  # replaces the task's default instruction
    system: str | None = None  # system message for chat templates
    template: Literal["auto", "chat", "plain"] = "auto"  # prompt layout
    source_lang: str | None = None  # translation: source language name
    target_lang: str | None = None  # translation: target language name
    input_field: str = "input"  # column holding the input
    output_field: str = "output"  # column holding the target
    messages_field: str = "messages"  # column holding chat messages
    text_field: str = "text"  # column holding free text
    eval_every: int | None = None  # validate every N steps (default: at the end of each epoch)
    eval_generate: int | None = (
        None  # rows generated per validation (default 16 when the metric needs them; 0 = none)
    )
    eval_budget_s: float = 60.0  # seconds the first generation pass may take; sizes the subset
    samples: int = 4  # fixed validation rows generated at each validation (samples.jsonl); 0: none
    metric: str = (
        "auto"  # picks the best checkpoint, early stopping: auto, val_loss, rougeL, bleu, ter…
    )
    patience: int | None = None  # stop after N validations without improvement
    final_model: Literal["best", "last"] = "best"  # what RUN/model holds when validation ran
    save_every: int | None = None  # checkpoint every N steps (always at the end)
    keep_last: int = 2  # checkpoints kept besides the best one
    resume: str | None = None  # "latest" or a checkpoint directory to continue from
    overwrite: bool = False  # delete the run already in --out (checkpoints too) and start anew
    packing: bool = False  # pack several examples per row (they cannot attend to each other)
    group_by_length: bool = True  # batch rows of similar length (less padding); off: random
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory
    memory_budget: float | None = None  # GiB to peak at: a probe picks micro-batch, checkpointing
    compile: bool = False  # torch.compile the model
    fsdp: bool = False  # shard weights, gradients and optimizer state over the processes (FSDP2)
    dist_timeout: float = 600.0  # seconds a process waits for the others before the run stops
    precision: Literal["auto", "fp32", "bf16", "fp16"] = (
        "auto"  # autocast; auto = bf16 where the GPU or CPU has it
    )
    master_weights: Literal["fp32", "bf16"] = (
        "fp32"  # the trained weights, gradients and AdamW moments: bf16 halves their memory (updates rounded stochastically; lost quality on dev rows: bench/results/defaults.md)
    )
    moments: Literal["auto", "fp32", "bf16"] = (
        "auto"  # AdamW's moments; auto = bf16 for full fine-tuning on a CPU (4 bytes a parameter less, same quality on dev rows), else as the master weights
    )
    tensorboard: bool = True  # also log to TensorBoard when it is installed
    report_to: str = "none"  # also log to trackers: trackio, mlflow (comma list), or none
    tracker_dir: str | None = (
        None  # the trackers' store: a folder, or an MLflow URI (default: theirs)
    )
    tracker_project: str = "gentune"  # the Trackio project / MLflow experiment of the run
    progress: bool = True  # progress bar

    def __post_init__(self):
        if isinstance(self.data, list):  # (YAML)
            object.__setattr__(self, "data", tuple(self.data))
        if isinstance(self.data, tuple) and len(self.data) == 1:
            object.__setattr__(self, "data", self.data[0])
        problems = type_problems(self)
        bad = {p.split("=")[0] for p in problems}  # value checks skip mistyped fields

        problems += [
            message(self)
            for names, ok, message in _TRAIN_RULES
            if not bad & set(names.split()) and not ok(self)
        ]
        if "data" not in bad:
            try:
                _ = self.data_files
            except ConfigError as e:
                problems.append(str(e))
        if problems:
            _fail("training", problems)

    @property
    def peak_lr(self) -> float:
        """The learning rate (resolved: see recipe.LEARNING_RATE for the defaults)."""
        if self.lr is None:
            raise ValueError("lr is chosen by recipe.resolve before training")
        return self.lr

    @property
    def passes(self) -> float:
        """The epochs (resolved: see recipe.choose_epochs for the default)."""
        if self.epochs is None:
            raise ValueError("epochs are chosen by recipe.resolve before training")
        return self.epochs

    @property
    def higher_is_better(self) -> bool:
        """The direction of --metric (validation loss: lower is better)."""
        return self.metric not in ("auto", "val_loss") and bool(
            METRICS[self.metric].higher_is_better
        )

    @property
    def batch(self) -> int:
        """The batch size (chosen by recipe.resolve where it was not given)."""
        if self.batch_size is None:
            raise ValueError("the batch size is chosen by recipe.resolve before training")
        return self.batch_size

    @property
    def micro(self) -> int:
        return self.micro_batch_size or self.batch

    @property
    def data_files(self) -> list[tuple[str, float]]:
        """(path, weight) of each --data file (FILE:WEIGHT; a file whose own name has such an
        ending is taken whole)."""
        specs = [self.data] if isinstance(self.data, str) else list(self.data)
        return [(spec, 1.0) if Path(spec).exists() else parse_spec(spec) for spec in specs]

    def to_dict(self) -> dict:
        return asdict(self)

    def run_settings(self) -> dict:
        """The settings saved with a run (train_config.json): all but what one invocation asks
        of the run directory (resume, overwrite), so `--config RUN/train_config.json --resume`
        continues it."""
        return {**self.to_dict(), "resume": None, "overwrite": False}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        problems = [f"unknown setting {k!r}" + _suggest(k, known) for k in unknown]
        required = [
            f.name
            for f in fields(cls)
            if f.default is f.default_factory is _MISSING and f.name not in d
        ]
        problems += [
            f"{k}: required (in the recipe, as --{k.replace('_', '-')} or {k}=...)"
            for k in required
        ]
        values = {k: v for k, v in d.items() if k in known}
        values.update({k: "summarization" if k == "task" else "?" for k in required})
        try:  # the remaining settings are checked too, so every problem shows at once
            cfg = cls(**values)
        except ConfigError as e:
            problems += [p for p in e.problems if not any(p.startswith(f"{k}=") for k in required)]
        if problems:
            _fail("training", problems)
        return cfg

    @classmethod
    def from_sources(
        cls,
        recipe: str | None = None,
        flags: dict | None = None,
        overrides: list[str] | tuple[str, ...] = (),
    ) -> TrainConfig:
        """Settings from a YAML recipe, then command-line flags, then key=value overrides."""
        merged: dict = {}
        if recipe:
            merged.update(load_recipe(recipe))
        merged.update(flags or {})
        hints = typing.get_type_hints(cls)
        for item in overrides:
            key, sep, value = item.partition("=")
            key = key.strip().lstrip("-").replace("-", "_")
            if not sep:
                raise ConfigError(f"override {item!r}: write it as key=value")
            merged[key] = coerce(hints.get(key, str), value)
        return cls.from_dict(merged)


def _at_least(name: str, low: int) -> tuple:
    """A rule: the optional field `name` is None or >= low."""
    return (
        name,
        lambda c: getattr(c, name) is None or getattr(c, name) >= low,
        lambda c: f"{name}={getattr(c, name)}: must be >= {low}",
    )


_METRIC_CHOICES = ("auto", "val_loss", *REFERENCE_METRICS)
_TRACKER_NAMES = ("trackio", "mlflow")  # training/trackers.py
# TrainConfig's value checks: (the fields it reads, what holds, the problem otherwise); all are
# checked together, each one only where its fields are well typed
_TRAIN_RULES: tuple[tuple[str, Callable[[Any], bool], Callable[[Any], str]], ...] = (
    (
        "task",
        lambda c: c.task in TASKS,
        lambda c: f"task={c.task!r}: choose one of {', '.join(TASKS)}",
    ),
    (
        "epochs",
        lambda c: c.epochs is None or c.epochs > 0,
        lambda c: f"epochs={c.epochs}: must be > 0",
    ),
    (
        "dist_timeout",
        lambda c: c.dist_timeout > 0,
        lambda c: f"dist_timeout={c.dist_timeout}: must be > 0 (seconds)",
    ),
    (
        "batch_size",
        lambda c: c.batch_size is None or c.batch_size >= 1,
        lambda c: f"batch_size={c.batch_size}: must be >= 1",
    ),
    (
        "micro_batch_size batch_size",
        lambda c: (
            c.micro_batch_size is None
            or (
                c.micro_batch_size >= 1
                and (c.batch_size is None or c.batch_size % c.micro_batch_size == 0)
            )
        ),
        lambda c: f"micro_batch_size={c.micro_batch_size}: must divide batch_size={c.batch_size}",
    ),
    ("lr", lambda c: c.lr is None or 0 < c.lr < 1, lambda c: f"lr={c.lr}: must be in (0, 1)"),
    (
        "master_weights fsdp",
        lambda c: not (c.master_weights == "bf16" and c.fsdp),
        lambda c: "master_weights=bf16 with --fsdp: FSDP keeps fp32 shards; drop one of them",
    ),
    (
        "moments fsdp",
        lambda c: not (c.moments == "bf16" and c.fsdp),
        lambda c: "moments=bf16 with --fsdp: FSDP's optimizer keeps fp32 shards; drop one of them",
    ),
    (
        "warmup_ratio",
        lambda c: 0 <= c.warmup_ratio < 1,
        lambda c: f"warmup_ratio={c.warmup_ratio}: must be in [0, 1)",
    ),
    (
        "val_fraction",
        lambda c: 0 < c.val_fraction < 1,
        lambda c: f"val_fraction={c.val_fraction}: must be in (0, 1)",
    ),
    (
        "max_length",
        lambda c: c.max_length >= 16,
        lambda c: f"max_length={c.max_length}: must be >= 16",
    ),
    ("lora_r", lambda c: c.lora_r >= 1, lambda c: f"lora_r={c.lora_r}: must be >= 1"),
    (
        "task source_lang target_lang instruction",
        lambda c: (
            c.task != "translation"
            or c.instruction is not None
            or bool(c.source_lang and c.target_lang)
        ),
        lambda c: (
            "task=translation needs source_lang and target_lang (e.g. --source-lang German --target-lang English)"
        ),
    ),
    *(_at_least(name, 1) for name in ("max_steps", "eval_every", "save_every", "patience")),
    _at_least("micro_batch_tokens", 16),
    (
        "memory_budget",
        lambda c: c.memory_budget is None or c.memory_budget > 0,
        lambda c: f"memory_budget={c.memory_budget}: must be > 0 (GiB)",
    ),
    ("keep_last", lambda c: c.keep_last >= 1, lambda c: f"keep_last={c.keep_last}: must be >= 1"),
    _at_least("eval_generate", 0),
    _at_least("samples", 0),
    (
        "report_to",
        lambda c: (
            c.report_to == "none"
            or all(t.strip() in _TRACKER_NAMES for t in c.report_to.split(","))
        ),
        lambda c: f"report_to={c.report_to!r}: choose trackio, mlflow (comma list) or none",
    ),
    (
        "metric",
        lambda c: c.metric in _METRIC_CHOICES,
        lambda c: f"metric={c.metric!r}: choose one of {', '.join(_METRIC_CHOICES)}",
    ),
    (
        "metric eval_generate",
        lambda c: c.metric in ("auto", "val_loss") or c.eval_generate != 0,
        lambda c: f"metric={c.metric} needs eval_generate > 0",
    ),
    (
        "resume overwrite",
        lambda c: not (c.resume and c.overwrite),
        lambda c: (
            "resume and overwrite: choose one (continue the run in --out, or delete it and start again)"
        ),
    ),
)


_MISSING = fields(TrainConfig)[0].default  # dataclasses.MISSING, as the class sees it


def load_recipe(path: str | Path) -> dict:
    """A YAML recipe as a dict of settings (dashes in keys become underscores)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such recipe file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of settings (key: value)")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """The one-line comment after each field, used as command-line help.

    Read from the module's file line by line, not with `inspect.getsource`: on Python 3.11 that
    parses the module with `ast`, whose recursion counter is shared between threads, and a parse
    running in another thread at the same moment made it fail ("AST constructor recursion depth
    mismatch").
    """
    lines = Path(inspect.getfile(cls)).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"class {cls.__name__}\b", line))
    docs, wrapped = {}, None
    for line in lines[start + 1 :]:
        if line.strip() and not line[0].isspace():
            break  # the class body ended
        m = re.match(r"    (\w+): [^#]+#\s*(.+)$", line)
        if m:
            docs[m.group(1)] = m.group(2)
        elif wrapped and (m := re.match(r"        [^#]+#\s*(.+)$", line)):
            docs[wrapped] = m.group(1)  # a default wrapped in parentheses: its comment below
        m = re.match(r"    (\w+): .*= \($", line)
        wrapped = m.group(1) if m else None
    return docs


def _base_types(hint) -> tuple:
    """The accepted runtime types of an annotation (a Literal's values: see `_choices`)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(hint) for t in _base_types(a))
    if origin is Literal:
        return (str,)
    if origin in (tuple, list, dict):
        return (origin,)
    if hint is float:
        return (float, int)
    if hint is type(None):
        return (type(None),)
    return (hint,)


def coerce(hint, text):
    """A command-line string as the annotated type ('none' → None, 'true' → True, 1e-4 → float).
    What does not convert stays a string, and validation then names it."""
    if not isinstance(text, str):
        return text
    allowed = _base_types(hint)
    low = text.strip().lower()
    if type(None) in allowed and low in ("none", "null", "~", ""):
        return None
    if bool in allowed and low in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        return low in ("true", "yes", "on", "1")
    for kind in (int, float):
        if kind in allowed:
            try:
                return kind(text)
            except ValueError:
                pass
    return text


def _choices(hint) -> tuple | None:
    """The values a Literal annotation allows (None: not a Literal)."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [c for a in typing.get_args(hint) if (c := _choices(a))]
        return tuple(v for c in found for v in c) if found else None
    return None


def type_problems(obj) -> list[str]:
    """Every field whose value does not fit its annotation (type, or a Literal's choices)."""
    problems = []
    for name, hint in typing.get_type_hints(type(obj)).items():
        value = getattr(obj, name)
        allowed = _base_types(hint)
        if isinstance(value, bool) and bool not in allowed:
            ok = False
        else:
            ok = isinstance(value, allowed)
        choices = _choices(hint)
        if not ok:
            want = " or ".join(sorted({"none" if t is type(None) else t.__name__ for t in allowed}))
            problems.append(f"{name}={value!r}: must be {want}")
        elif choices and value not in choices and value is not None:
            problems.append(
                f"{name}={value!r}: choose {', '.join(map(str, choices[:-1]))} or {choices[-1]}"
            )
    return problems


def _suggest(key: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


MIN_TEMPERATURE = 0.01  # lower sampling temperatures overflow the logits (use greedy)
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.manual_seed accepts


@dataclass(frozen=True, kw_only=True)
class Decoding:
    max_new_tokens: int = 128  # tokens generated at most
    do_sample: bool = False  # sample instead of greedy / beam search
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling
    top_k: int = 0  # top-k sampling (0 = off)
    min_p: float = 0.0  # min-p sampling: drop tokens below min_p × the top probability
    num_beams: int = 1  # beam search width
    length_penalty: float = 1.0  # beam search: >1 favours longer, <1 shorter outputs
    repetition_penalty: float = 1.0  # >1 discourages repeats
    no_repeat_ngram_size: int = 0  # forbid repeating n-grams of this size (0 = off)
    num_return_sequences: int = 1  # outputs per prompt (≤ num_beams for beam search)
    stop: tuple[str, ...] = ()  # stop strings: generation ends before the first one
    seed: int = 0  # seeds sampling

    def __post_init__(self):
        if problems := type_problems(self):  # values are compared below: types first
            _fail("decoding", problems)
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens}: must be >= 1")
        if not self.temperature >= MIN_TEMPERATURE:
            problems.append(
                f"temperature={self.temperature}: must be >= {MIN_TEMPERATURE} "
                "(for greedy decoding, do not sample)"
            )
        if not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            problems.append(f"seed={self.seed}: must fit in 64 bits")
        if not -100 <= self.length_penalty <= 100:
            problems.append(f"length_penalty={self.length_penalty}: must be in [-100, 100]")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p}: must be in (0, 1]")
        if self.num_beams < 1:
            problems.append(f"num_beams={self.num_beams}: must be >= 1")
        if not 0 <= self.min_p < 1:
            problems.append(f"min_p={self.min_p}: must be in [0, 1)")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k}: must be >= 0")
        if not 0.01 <= self.repetition_penalty <= 100:
            problems.append(f"repetition_penalty={self.repetition_penalty}: must be in [0.01, 100]")
        if self.no_repeat_ngram_size < 0:
            problems.append(f"no_repeat_ngram_size={self.no_repeat_ngram_size}: must be >= 0")
        n = self.num_return_sequences
        if n < 1 or (not self.do_sample and n > self.num_beams):
            problems.append(
                f"num_return_sequences={n}: must be >= 1, and at most num_beams unless sampling"
            )
        if problems:
            _fail("decoding", problems)


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """`gentune serve`: access, limits and timeouts (every field is a flag)."""

    api_key: str | None = None  # key every route but /health requires (else $GENTUNE_API_KEY)
    max_tokens_limit: int = 1024  # largest max_tokens a request may ask for (else 400)
    max_prompt_tokens: int = 8192  # prompt tokens a request may bring, over its prompts (else 400)
    max_body_bytes: int = 1 << 20  # larger request bodies are refused with 413
    max_batch: int = 8  # prompts generated together
    max_queue: int = 64  # requests that may wait; one more is refused at once with 429
    timeout: float = 120.0  # seconds per request, waiting included (then 504)
    header_timeout: float = 10.0  # seconds to send a request's headers (then disconnected)
    body_timeout: float = 30.0  # seconds to send a request's body (then 408)
    model_name: str | None = None  # model id in /v1/models (default: the folder name)
    task: str | None = None  # task template for a plain model (runs know theirs)

    def __post_init__(self):
        problems = type_problems(self)
        if not problems:
            problems += [
                f"{name}={getattr(self, name)}: must be > 0"
                for name in (
                    "max_body_bytes",
                    "max_tokens_limit",
                    "max_prompt_tokens",
                    "max_batch",
                    "max_queue",
                    "timeout",
                    "header_timeout",
                    "body_timeout",
                )
                if not getattr(self, name) > 0
            ]
            if self.task is not None and self.task not in TASKS:
                problems.append(f"task={self.task!r}: choose one of {', '.join(TASKS)}")
        if problems:
            _fail("server", problems)


@dataclass(frozen=True, kw_only=True)
class DistillSettings:
    """`gentune distill`: a teacher labels inputs, a student trains on them (every field is a
    flag)."""

    task: str  # summarization | translation (tasks whose rows are input/output pairs)
    teacher: str  # a gentune run, model directory, embedded name, hub id or http(s) URL
    inputs: str  # unlabelled inputs (JSONL/CSV/TSV with an input column, or .txt)
    out: str  # directory for the labels, the student runs and the report
    gold: str | None = None  # labelled rows: mixed with the pseudo-labels; length filters
    test: str | None = None  # labelled rows to score base, student(s) and teacher on
    instruction: str | None = None  # the task's instruction (teacher and student)
    source_lang: str | None = None  # translation: source language, e.g. German
    target_lang: str | None = None  # translation: target language, e.g. English
    teacher_api: Literal["completions", "chat"] = (
        "completions"  # URL teachers: completions (input as prompt) or chat
    )
    teacher_model: str | None = None  # URL teachers: the model name to ask for
    teacher_api_key: str | None = None  # URL teachers: bearer key (else $OPENAI_API_KEY)
    candidates: int = 1  # candidates per input (beams, or samples): the teacher's best is kept
    sample: bool = False  # sample the candidates instead of beam search
    temperature: float = 0.7  # sampling temperature of the candidates
    max_new_tokens: int | None = None  # longest label (default: the task's)
    concurrency: int = 4  # requests in flight to a URL teacher
    retries: int = 4  # retries per request, with back-off
    limit: int | None = None  # label the first N inputs only
    student: str = DEFAULT_MODEL  # the student's base model
    gold_weight: float = 1.0  # gold's share of an epoch against the pseudo-labels' (1:1)
    pseudo_weight: float = 1.0  # the pseudo-labels' share of an epoch (1:1 with gold)
    epochs: float | None = None  # the student's passes over its data (default: the recipe's)
    max_steps: int | None = None  # stop the student after this many optimizer steps
    baseline: bool = False  # also train the student on the gold rows alone
    label_only: bool = False  # label and filter; train nothing
    progress: bool = True  # progress bars

    def __post_init__(self):
        problems = type_problems(self)
        bad = {p.split("=")[0] for p in problems}
        positive = ("candidates", "temperature", "concurrency", "gold_weight", "pseudo_weight")
        optional = ("max_new_tokens", "limit", "epochs", "max_steps")
        for name in positive + optional:
            value = getattr(self, name)
            if name not in bad and value is not None and not value > 0:
                problems.append(f"{name}={value}: must be > 0")
        if "retries" not in bad and self.retries < 0:
            problems.append(f"retries={self.retries}: give a whole number >= 0")
        if "task" not in bad and self.task not in TASKS:
            problems.append(f"task={self.task!r}: choose one of {', '.join(TASKS)}")
        if problems:
            _fail("distill", problems)


@dataclass(frozen=True, kw_only=True)
class ExplainSettings:
    """`gentune explain`: what fine-tuning changed, per token, and what the model memorised
    (every field is a flag)."""

    run: str  # the run directory to explain (gentune train's --out)
    data: str  # held-out rows to explain (with references, the reference side is scored too)
    out: str  # directory for explain.html, explain.json and the plot
    base: str | None = None  # the model to compare with (default: the run's own base model)
    train: str | None = None  # training rows for memorisation (default: the run's, by sha256)
    limit: int = 32  # rows of --data, and of the training rows, explained
    attribution: bool = False  # also gradient x input over the source, base and tuned
    precision: Literal["fp32", "bf16", "auto"] = "fp32"  # both models' weights (bf16: faster)
    batch_size: int = 8  # rows per generation batch and teacher-forced pass
    bootstrap: int = 1000  # bootstrap resamples for the intervals
    seed: int = 0  # of the bootstrap and of the training rows' sample
    progress: bool = True  # progress bars

    def __post_init__(self):
        problems = type_problems(self)
        bad = {p.split("=")[0] for p in problems}
        for name in ("limit", "batch_size", "bootstrap"):
            if name not in bad and not getattr(self, name) > 0:
                problems.append(f"{name}={getattr(self, name)}: must be > 0")
        if problems:
            _fail("explain", problems)


@dataclass(frozen=True, kw_only=True)
class SweepSettings:
    """`gentune sweep`: an Optuna study over training settings, each trial an ordinary run
    (every field is a flag)."""

    config: str  # the base recipe (YAML) every trial starts from
    space: str  # the search space (YAML): setting: [choices] or {low: L, high: H, log: true}
    out: str  # the sweep's directory: trials/, study.journal, trials.csv, best.yaml, compare/
    trials: int = 8  # trials in all, over every worker (a pruned trial counts, a failed one not)
    time_budget: float | None = None  # seconds after which this worker starts no new trial
    workers: int = 1  # worker processes on this machine, the CPU threads shared between them
    storage: str | None = None  # Optuna storage URL (several machines); default OUT/study.journal
    study: str = "gentune"  # the study's name in the storage
    seed: int = 0  # the TPE sampler's seed (each worker mixes in its index and the trials so far)
    prune: bool = True  # median pruning on each validation's value, at the same epoch
    top: int = 3  # the best trials put side by side in OUT/compare (runs compare)

    def __post_init__(self):
        problems = type_problems(self)
        bad = {p.split("=")[0] for p in problems}
        for name in ("trials", "workers", "top", "time_budget"):
            value = getattr(self, name)
            if name not in bad and value is not None and not value > 0:
                problems.append(f"{name}={value}: must be > 0")
        if "seed" not in bad and self.seed < 0:
            problems.append(f"seed={self.seed}: must be >= 0")
        if problems:
            _fail("sweep", problems)


CHECKS = ("slices", "perturb", "forget", "faithful", "safety")
PERTURBATIONS = ("typos", "case", "spaces", "mild-mix")
ALL_CHECKS = ",".join(CHECKS)


@dataclass(frozen=True, kw_only=True)
class ChecksSettings:
    """The checks beyond the training rows that `evaluate --compare` and `explain` run, base
    against tuned (every field is a flag of both)."""

    checks: str = ALL_CHECKS  # slices, perturb, forget, faithful, safety (comma list), or none
    perturb: str = "typos"  # the perturb check's: typos, case, spaces, mild-mix (comma list)
    general_text: str | None = None  # text for forgetting, .txt or .jsonl (default: chitchat)
    general_rows: int = 48  # general-text passages for forgetting

    def __post_init__(self):
        problems = type_problems(self)
        for name, allowed in (("checks", CHECKS), ("perturb", PERTURBATIONS)):
            value = getattr(self, name)
            if isinstance(value, str) and value != "none":
                bad = [x for x in _items(value) if x not in allowed]
                if bad:
                    problems.append(
                        f"{name}={value}: unknown {', '.join(bad)} (choose from "
                        f"{', '.join(allowed)}{', or none' if name == 'checks' else ''})"
                    )
        if isinstance(self.general_rows, int) and not self.general_rows > 0:
            problems.append(f"general_rows={self.general_rows}: must be > 0")
        if problems:
            _fail("checks", problems)

    @property
    def selected(self) -> list[str]:
        return [] if self.checks == "none" else [c for c in CHECKS if c in _items(self.checks)]

    @property
    def perturbations(self) -> list[str]:
        return [] if self.perturb == "none" else _items(self.perturb)


def _items(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def gentune_home() -> Path:
    """Where converted models are cached: $GENTUNE_HOME, else ~/.cache/gentune."""
    return Path(os.environ.get("GENTUNE_HOME", Path.home() / ".cache" / "gentune"))
