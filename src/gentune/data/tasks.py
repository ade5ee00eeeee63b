"""Task presets and the prompt template, the one object that turns a record into text.

A `PromptTemplate` is saved with every run (template.json) and is the only thing that renders
prompts, in training, generation and evaluation alike, so the prompt at inference is
byte-identical to the one trained on. A record renders to *segments*: pieces of text that are
either context (masked from the loss) or targets (trained, each ending with EOS).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from gentune.config import TaskName
from gentune.data.records import Kind, Record
from gentune.errors import ConfigError, DataError, check_keys, read_json_object
from gentune.metrics import REFERENCE_METRICS


@dataclass(frozen=True, kw_only=True)
class Task:
    """A preset: what the data looks like, how to prompt, what to measure, how to decode."""

    name: TaskName
    kind: Kind  # the record shape the task reads
    instruction: str  # default instruction put before the input
    metrics: tuple[str, ...]  # what evaluation reports, headline first (names in METRICS)
    max_new_tokens: int  # decoding default
    do_sample: bool = False  # decoding default (greedy unless the task is free generation)
    source_prefix: str = ""  # what families trained with prefixes (T5) put before the source

    @property
    def validation_metric(self) -> str:
        """The metric validation generates for (when --metric is val_loss): the first of the
        task's metrics that compares outputs with references."""
        return next(m for m in self.metrics if m in REFERENCE_METRICS)


# the one table of what each task measures, headline first
TASKS: dict[str, Task] = {
    "summarization": Task(
        name="summarization",
        kind="pairs",
        instruction="Summarize the following text.",
        source_prefix="summarize: ",
        metrics=(
            "rougeL",
            "rouge1",
            "rouge2",
            "rougeLsum",
            "bleu",
            "chrf",
            "length",
            "perplexity",
            "stopped_by_eos",
        ),
        max_new_tokens=128,
    ),
    "translation": Task(
        name="translation",
        kind="pairs",
        instruction="Translate the following text from {source_lang} to {target_lang}.",
        source_prefix="translate {source_lang} to {target_lang}: ",
        metrics=("bleu", "chrf", "ter", "rougeL", "length", "perplexity", "stopped_by_eos"),
        max_new_tokens=256,
    ),
    "dialogue": Task(
        name="dialogue",
        kind="chat",
        instruction="",
        metrics=(
            "rougeL",
            "distinct1",
            "distinct2",
            "length",
            "bleu",
            "chrf",
            "perplexity",
            "stopped_by_eos",
        ),
        max_new_tokens=128,
    ),
    "text": Task(
        name="text",
        kind="text",
        instruction="",
        metrics=("perplexity", "distinct1", "distinct2", "length", "rougeL", "stopped_by_eos"),
        max_new_tokens=128,
        do_sample=True,
    ),
}


def get_task(name: str) -> Task:
    """The task preset by name (a clear error for an unknown one)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool  # True: loss on these tokens (and an EOS closes them)


@dataclass(frozen=True, kw_only=True)
class PromptTemplate:
    """How records become text. Saved with the run and reloaded byte for byte."""

    task: TaskName
    # the tokenizer's chat template, a plain text layout, or source -> target (encoder-decoder)
    style: Literal["chat", "plain", "seq2seq"]
    instruction: str  # resolved instruction (languages filled in); a seq2seq source prefix
    eos_token: str  # the string of the EOS token every target ends with
    chat_template: str | None = None  # the jinja template, copied from the tokenizer
    system: str | None = None  # optional system message for chat style
    max_length: int | None = None  # tokens per example in training (prompt + target)
    target_tokens: int | None = None  # the median target in training (EOS included)
    target_p99: int | None = None  # the 99th percentile of the training targets (EOS included)

    # ---- persistence -------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PromptTemplate:
        """The saved template; a damaged file (not JSON, keys missing or unknown) is named."""
        from dataclasses import MISSING, fields

        data = read_json_object(path, "prompt template")
        required = [f.name for f in fields(cls) if f.default is MISSING]
        check_keys(path, data, required, {f.name for f in fields(cls)})
        return cls(**data)

    def prompt_limit(self, context: int, max_new_tokens: int) -> int:
        """The most tokens a prompt may have at inference. Training shortened inputs so that
        prompt + target fit in `max_length`; at inference the same rule holds for a target of
        the median training length, so such a row's prompt is token for token the one trained
        on. Without a training limit (a plain model), or for free text: the context left after
        `max_new_tokens`."""
        if self.style == "seq2seq":  # the source has the encoder to itself
            return min(context, self.max_length or context)
        room = context - max_new_tokens
        if self.max_length is None:
            return room
        return min(room, self.max_length - (self.target_tokens or max_new_tokens))

    def new_tokens_cap(self) -> tuple[int, str]:
        """(new tokens at most, why): 1.5 x the 99th percentile of the training targets,
        within the task's cap; the task's cap where the run recorded none."""
        task_cap = get_task(self.task).max_new_tokens
        if not self.target_p99:
            return task_cap, f"the {self.task} task's default"
        cap = min(task_cap, math.ceil(1.5 * self.target_p99))
        return cap, (
            f"1.5 x the training targets' 99th percentile ({self.target_p99} tokens)"
            + (f", within the {self.task} task's {task_cap}" if cap == task_cap else "")
        )

    def new_tokens_note(self) -> str:
        """The cap on new tokens and where it comes from, for the user."""
        cap, why = self.new_tokens_cap()
        return f"at most {cap} new tokens: {why} (--max-new-tokens to change)"

    # ---- rendering ---------------------------------------------------------------------
    def segments(self, record: Record, tokenizer) -> list[Segment]:
        """All of a labelled record, as alternating context and target segments (for an
        encoder-decoder: the source, then the target)."""
        if self.style == "seq2seq":
            target = self.reference(record)
            return [
                Segment(self.source(record), False),
                Segment((target or "") + self.eos_token, True),
            ]
        if self.task == "text" or record.text is not None:
            if record.text is not None:
                return [Segment(record.text, True)]
            return [
                Segment(record.input or "", False),
                Segment(_lead_space(record.output or ""), True),
            ]
        messages = self.messages(record)
        if self.style == "chat":
            return _chat_segments(messages, tokenizer, self.chat_template, self.eos_token)
        return _plain_segments(messages, self.eos_token)

    def prompt_segments(self, record: Record, tokenizer) -> list[Segment]:
        """The context a model generates from: everything before the last target."""
        if self.style == "seq2seq":
            return [Segment(self.source(record), False)]
        if self.task == "text" or record.text is not None:
            return [Segment(record.input or "" if record.text is None else record.text, False)]
        messages = self.messages(record)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if self.style == "chat":
            segs = _chat_segments(
                messages, tokenizer, self.chat_template, self.eos_token, add_generation_prompt=True
            )
        else:
            segs = _plain_segments(messages, self.eos_token, add_generation_prompt=True)
        return segs

    def reference(self, record: Record) -> str | None:
        """The text a prediction is scored against, if the record has one."""
        if record.messages is not None:
            last = record.messages[-1]
            return last["content"] if last["role"] == "assistant" else None
        return record.output

    def source(self, record: Record) -> str:
        """An encoder-decoder's source text: the prefix and the input; a conversation before its
        last assistant turn, flattened one "role: content" line per turn."""
        if record.text is not None:
            raise DataError(
                f"{record.where}: a text row has no input to encode; an encoder-decoder "
                "needs input/output pairs (task text reads them too)"
            )
        if record.messages is None:
            return f"{self.instruction}{record.input}"
        messages = self.messages(record)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return self.instruction + "\n".join(lines)

    def messages(self, record: Record) -> list[dict]:
        if record.messages is not None:
            msgs = list(record.messages)
        else:
            user = f"{self.instruction}\n\n{record.input}" if self.instruction else record.input
            msgs = [{"role": "user", "content": user}]
            if record.output is not None:
                msgs.append({"role": "assistant", "content": record.output})
        if self.system and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": self.system})
        return msgs


def prompt_record(
    template: PromptTemplate, text: str, *, row: int = 1, source: str = "<prompt>"
) -> Record:
    """A bare prompt as a record of the template's task (`gentune generate "..."`, the
    server's completions): a user turn for dialogue, the input otherwise."""
    if template.task == "dialogue":
        return Record(source=source, row=row, messages=({"role": "user", "content": text},))
    return Record(source=source, row=row, input=text)


def build_template(
    task: Task,
    tokenizer,
    *,
    instruction: str | None = None,
    source_lang: str | None = None,
    target_lang: str | None = None,
    system: str | None = None,
    style: str = "auto",
    seq2seq: bool = False,
    source_prefix: bool = False,
) -> PromptTemplate:
    """The template for a task and tokenizer: the chat template where the tokenizer has one;
    for an encoder-decoder (`seq2seq`) the source and the target, the task's prefix before the
    source where the family was trained with prefixes (`source_prefix`: T5), none otherwise
    (`instruction` replaces either)."""
    if seq2seq:
        if style not in ("auto", "seq2seq"):
            raise ConfigError(
                f"--template {style} is for decoder-only models; an encoder-decoder reads the "
                "source and writes the target (leave --template at auto)"
            )
        style = "seq2seq"
        default = task.source_prefix if source_prefix else ""
        text = default if instruction is None else instruction
    else:
        text = task.instruction if instruction is None else instruction
    if task.name == "translation" and "{" in text:
        if not source_lang or not target_lang:
            raise ConfigError(
                "task 'translation' needs --source-lang and --target-lang "
                "(e.g. --source-lang German --target-lang English)"
            )
        text = text.format(source_lang=source_lang, target_lang=target_lang)
    if tokenizer.eos_token is None:
        raise ConfigError(
            "the tokenizer has no EOS token; gentune needs one to teach the "
            "model to stop (set tokenizer.eos_token in the model directory)"
        )
    if style == "seq2seq":
        return PromptTemplate(
            task=task.name,
            style="seq2seq",
            instruction=text,
            eos_token=tokenizer.eos_token,
            system=system,
        )
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if style == "auto":
        style = "chat" if has_chat and task.name != "text" else "plain"
    if style == "chat" and not has_chat:
        raise ConfigError("--template chat asked for, but the tokenizer has no chat template")
    return PromptTemplate(
        task=task.name,
        style="chat" if style == "chat" else "plain",
        instruction=text,
        eos_token=tokenizer.eos_token,
        chat_template=tokenizer.chat_template if style == "chat" else None,
        system=system,
    )


def chat_template_for(template: PromptTemplate | None, tokenizer, **options) -> PromptTemplate:
    """The template a multi-turn chat uses (`gentune chat`, /v1/chat/completions): a run's own,
    which has turns unless it is free text, else the dialogue template of the tokenizer
    (`options`: `models.template_options`; an encoder-decoder reads the conversation
    flattened into its source)."""
    if template is not None and template.task != "text":
        return template
    return build_template(get_task("dialogue"), tokenizer, **options)


def _lead_space(text: str) -> str:
    return text if text[:1].isspace() else " " + text


# Plain layout, for models without a chat template (GPT-2 and other base models).
_PLAIN_ROLE = {"system": "", "user": "### Input:\n", "assistant": "### Response:\n"}


def _plain_segments(
    messages: list[dict], eos: str, *, add_generation_prompt: bool = False
) -> list[Segment]:
    segs: list[Segment] = []
    context = ""
    for m in messages:
        if m["role"] == "assistant":
            segs.append(Segment(context + _PLAIN_ROLE["assistant"], False))
            segs.append(Segment(m["content"] + eos, True))
            context = "\n\n"
        else:
            context += _PLAIN_ROLE[m["role"]] + m["content"] + "\n\n"
    if add_generation_prompt:
        segs.append(Segment(context + _PLAIN_ROLE["assistant"], False))
    return _merge(segs)


def _chat_segments(
    messages: list[dict],
    tokenizer,
    chat_template: str | None,
    eos: str,
    *,
    add_generation_prompt: bool = False,
) -> list[Segment]:
    """Split a chat-template rendering into context and assistant spans.

    Each assistant span is found by rendering the conversation up to it with and without the
    turn: the difference is the turn's text. Its content and EOS are trained; what the template
    puts after EOS (a newline, say) is context.
    """

    def render(msgs, gen):
        return tokenizer.apply_chat_template(
            msgs, chat_template=chat_template, tokenize=False, add_generation_prompt=gen
        )

    segs: list[Segment] = []
    done = ""  # text already turned into segments
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(messages[:i], True)
        through = render(messages[: i + 1], False)
        if not (before.startswith(done) and through.startswith(before)):
            raise DataError(
                "the chat template does not render conversations prefix by prefix; "
                "train with --template plain"
            )
        segs.append(Segment(before[len(done) :], False))
        turn = through[len(before) :]
        cut = turn.find(eos)
        if cut >= 0:
            segs.append(Segment(turn[: cut + len(eos)], True))
            segs.append(Segment(turn[cut + len(eos) :], False))
        else:  # the template closes turns without EOS: the target still ends with it
            segs.append(Segment(turn + eos, True))
        done = through
    full = render(messages, add_generation_prompt)
    if not full.startswith(done):
        raise DataError(
            "the chat template does not render conversations prefix by prefix; "
            "train with --template plain"
        )
    segs.append(Segment(full[len(done) :], False))
    return _merge(segs)


def _merge(segs: list[Segment]) -> list[Segment]:
    """Drop empty segments and join neighbours of the same kind (context only)."""
    out: list[Segment] = []
    for s in segs:
        if not s.text:
            continue
        if out and not s.trained and not out[-1].trained:
            out[-1] = Segment(out[-1].text + s.text, False)
        else:
            out.append(s)
    return out
