"""The OpenAI-compatible request bodies `gentune serve` accepts, and how they map to `Decoding`.

Fields OpenAI defines that gentune cannot honour (logprobs, penalties, tools…) are accepted only
at their neutral value; anything else is a 400 naming the field. Unknown fields are a 422, so a
typo never passes silently. Sampling: `temperature` 0 is greedy; omitted, the task's default
(greedy except for free text) — the same output as `gentune generate`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gentune.config import MIN_TEMPERATURE, SEED_RANGE, Decoding


class RequestError(ValueError):
    """A well-formed request the server cannot serve: answered 400 with this message."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _no_surrogates(value, path: str = ""):
    """Text must be encodable: an unpaired surrogate (JSON "\\ud800") would break the
    tokenizer and the reply, so it is the request's error (422 naming the field)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"{path or 'text'} contains an unpaired surrogate "
                f"(\\u{ord(value[e.start]):04x} at {e.start}); send valid "
                "Unicode"
            ) from None
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_surrogates(v, f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_surrogates(k, path)
            _no_surrogates(v, f"{path}.{k}" if path else str(k))
    return value


class _Strict(BaseModel):
    # unknown fields, NaN and infinities are refused (422) rather than reaching generation
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _valid_text(cls, value):
        return _no_surrogates(value)


class _Body(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    # 0 is greedy; a positive temperature below MIN_TEMPERATURE would overflow the logits
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    user: str | None = None
    # OpenAI fields gentune supports only at their neutral value
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None
    logprobs: bool | int | None = None
    # gentune's own decoding options (an OpenAI client sends them through extra_body)
    top_k: int | None = Field(None, ge=0, le=1 << 31)
    min_p: float | None = Field(None, ge=0, lt=1)
    repetition_penalty: float | None = Field(None, ge=0.01, le=100)
    no_repeat_ngram_size: int | None = Field(None, ge=0, le=1 << 31)
    num_beams: int | None = Field(None, ge=1, le=16)
    length_penalty: float | None = Field(None, ge=-100, le=100)

    def requested_tokens(self) -> int | None:
        return self.max_tokens

    def decoding(self, default: Decoding, *, max_tokens_limit: int) -> Decoding:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise RequestError(
                    f"{name} is not supported by gentune; use "
                    "repetition_penalty (> 1 discourages repeats)",
                    name,
                )
        if self.logit_bias:
            raise RequestError("logit_bias is not supported by gentune", "logit_bias")
        if self.logprobs:
            raise RequestError("logprobs are not supported by gentune", "logprobs")
        wanted = self.requested_tokens()
        if wanted is not None and wanted > max_tokens_limit:
            raise RequestError(
                f"max_tokens={wanted} is over this server's limit of "
                f"{max_tokens_limit} (gentune serve --max-tokens-limit)",
                "max_tokens",
            )
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4 or any(not s or len(s) > 256 for s in stop):
            raise RequestError("stop: up to 4 non-empty strings of at most 256 characters", "stop")
        if self.temperature is not None and 0 < self.temperature < MIN_TEMPERATURE:
            raise RequestError(
                f"temperature={self.temperature:g}: use 0 for greedy decoding "
                f"or at least {MIN_TEMPERATURE} for sampling",
                "temperature",
            )
        changes: dict = {
            "max_new_tokens": min(wanted or default.max_new_tokens, max_tokens_limit),
            "num_return_sequences": self.n,
            "stop": tuple(stop),
        }
        if self.temperature is not None:
            changes["do_sample"] = self.temperature > 0
            if self.temperature > 0:
                changes["temperature"] = self.temperature
        for name in (
            "top_p",
            "top_k",
            "min_p",
            "repetition_penalty",
            "no_repeat_ngram_size",
            "num_beams",
            "length_penalty",
            "seed",
        ):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        if self.n > 1 and not changes.get("do_sample", default.do_sample):
            beams = changes.get("num_beams", default.num_beams)
            if self.n > beams:
                raise RequestError(
                    f"n={self.n} with greedy decoding would give {self.n} "
                    "identical answers: set temperature > 0 (sampling) or "
                    f"num_beams >= {self.n}",
                    "n",
                )
        if self.stream and self.n > 1:
            raise RequestError(
                "stream with n > 1 is not supported; ask for one choice per request", "n"
            )
        try:
            return replace(default, **changes)
        except ValueError as e:
            bad = getattr(e, "problems", [""])[0].split("=")[0]
            raise RequestError(str(e), bad or None) from None


class CompletionRequest(_Body):
    """POST /v1/completions. The prompt is the *input* of the model's task template (as
    `gentune generate` takes it); `raw: true` sends it to the model as it is."""

    prompt: str | list[str] = Field(min_length=1)
    raw: bool = False
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def prompts(self) -> list[str]:
        if self.echo:
            raise RequestError("echo is not supported by gentune", "echo")
        if self.suffix:
            raise RequestError("suffix (insertion) is not supported by gentune", "suffix")
        if self.best_of not in (None, 1):
            raise RequestError("best_of is not supported; use n with sampling", "best_of")
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if self.stream and len(prompts) > 1:
            raise RequestError("stream with several prompts is not supported", "prompt")
        if len(prompts) > 64:
            raise RequestError("at most 64 prompts per request", "prompt")
        return prompts


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatRequest(_Body):
    """POST /v1/chat/completions: the messages are rendered with the model's chat template."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def conversation(self) -> tuple[dict, ...]:
        msgs = tuple({"role": m.role, "content": m.content} for m in self.messages)
        if msgs[-1]["role"] == "assistant":
            raise RequestError(
                "the last message is the assistant's: end with a user message", "messages"
            )
        if not any(m["role"] == "user" for m in msgs):
            raise RequestError("messages need at least one user message", "messages")
        return msgs


# ---- response shapes ------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(rid: str, model: str, choices: list[tuple[str, str]], used: dict) -> dict:
    """A /v1/completions answer; `choices` are (text, finish_reason)."""
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": k, "text": text, "finish_reason": reason, "logprobs": None}
            for k, (text, reason) in enumerate(choices)
        ],
        "usage": used,
    }


def chat_completion(rid: str, model: str, choices: list[tuple[str, str]], used: dict) -> dict:
    """A /v1/chat/completions answer; `choices` are (text, finish_reason)."""
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": k,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
                "logprobs": None,
            }
            for k, (text, reason) in enumerate(choices)
        ],
        "usage": used,
    }


def completion_chunk(
    rid: str, model: str, text: str | None, reason: str | None, *, start: bool = False
) -> dict | None:
    """A streamed /v1/completions event (none opens the stream)."""
    if start:
        return None
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}],
    }


def chat_chunk(
    rid: str, model: str, text: str | None, reason: str | None, *, start: bool = False
) -> dict:
    """A streamed /v1/chat/completions event: the first carries the role."""
    delta = (
        {"role": "assistant", "content": ""}
        if start
        else ({"content": text} if text is not None else {})
    )
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}],
    }
