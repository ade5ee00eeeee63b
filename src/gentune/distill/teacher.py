"""Teachers for `gentune distill`: a local model (a gentune run, a model directory, an embedded
name or a hub id) or an OpenAI-compatible server (`gentune serve`, vLLM, llama.cpp), each
labelling inputs with text.

A label is the teacher's best of its candidates: a local teacher scores each candidate by its
own mean token log-probability (one forward pass over prompt + candidate); a server gives no
scores (gentune serve returns no logprobs), so among several candidates the one that agrees
most with the others (mean chrF against them, a minimum-Bayes-risk choice) is taken, and the
label says which rule chose it.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

import torch

from gentune.config import Decoding
from gentune.data.records import Record
from gentune.errors import TeacherError


@dataclass
class Label:
    """One input's label, with its provenance (a line of the label cache)."""

    row: int  # the input's row in --inputs
    key: str  # a hash of the input: what the cache matches on resume
    input: str
    output: str | None  # None: the teacher failed on this row (`error`)
    teacher: str
    decoding: dict
    score: float | None = None  # the teacher's mean token log-probability of `output`
    stopped_by_eos: bool = False
    chosen_by: str = "only"  # only | score | agreement
    candidates: list[str] = field(default_factory=list)  # all of them, when more than one
    scores: list = field(default_factory=list)  # theirs, when the teacher gives scores
    seconds: float = 0.0
    error: str | None = None

    def line(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def agreement_choice(candidates: list[str]) -> int:
    """The candidate with the highest mean chrF against the others (minimum Bayes risk)."""
    from sacrebleu.metrics import CHRF

    if len(candidates) == 1:
        return 0
    chrf = CHRF()
    means = [
        sum(chrf.sentence_score(c, [o]).score for j, o in enumerate(candidates) if j != i)
        / (len(candidates) - 1)
        for i, c in enumerate(candidates)
    ]
    return max(range(len(candidates)), key=lambda i: means[i])


class LocalTeacher:
    """A model loaded here; labels rows in batches with `generate`."""

    def __init__(self, spec: str, *, task: str | None, precision: str = "fp32", **template_args):
        from gentune.inference.load import load_for_inference, resolve_template

        self.name = spec
        self.loaded = load_for_inference(spec, precision=precision)
        self.template = resolve_template(self.loaded, task, **template_args)

    def label(self, records: list[Record], decoding: Decoding, batch_size: int = 8) -> list:
        """[(candidates, scores, stopped_by_eos flags)] per record."""
        from gentune.inference.generate import encode_prompts, generate

        tok, model = self.loaded.tokenizer, self.loaded.model
        encoded = encode_prompts(records, self.template, tok, model, decoding.max_new_tokens)
        prompts = [ids for ids, _, _ in encoded]
        gens = generate(model, tok, prompts, decoding, batch_size=batch_size)
        n = decoding.num_return_sequences
        out = []
        for i, prompt in enumerate(prompts):
            group = gens[i * n : (i + 1) * n]
            scores = [self.mean_logprob(prompt, g.text) for g in group]
            out.append(([g.text for g in group], scores, [g.finished for g in group]))
        return out

    @torch.no_grad()
    def mean_logprob(self, prompt: list[int], text: str) -> float | None:
        """The teacher's mean log-probability per token of `text` (EOS included) after
        `prompt` (a decoder-only model; None for an encoder-decoder)."""
        from gentune.models.families import is_seq2seq

        model, tok = self.loaded.model, self.loaded.tokenizer
        if is_seq2seq(model) or not text:
            return None
        target = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([prompt + target], device=model.device)
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        lp = torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt) :, None])
        return float(lp.mean())


class HttpTeacher:
    """An OpenAI-compatible server: POST /v1/completions (the input as the prompt: gentune
    serve puts it through its run's template) or /v1/chat/completions (instruction and input as
    one user message), with retries and back-off."""

    def __init__(
        self,
        url: str,
        *,
        api: str = "completions",
        model: str | None = None,
        api_key: str | None = None,
        instruction: str | None = None,
        concurrency: int = 4,
        retries: int = 4,
        timeout: float = 120.0,
        backoff: float = 0.5,
    ):
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise TeacherError(f"--teacher {url}: not an http(s) URL")
        base = url.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        self.name, self.endpoint = (
            url,
            f"{base}/{'chat/completions' if api == 'chat' else 'completions'}",
        )
        self.api, self.model, self.api_key, self.instruction = api, model, api_key, instruction
        self.concurrency, self.retries, self.timeout, self.backoff = (
            concurrency,
            retries,
            timeout,
            backoff,
        )

    def body(self, text: str, decoding: Decoding) -> dict:
        body: dict = {
            "max_tokens": decoding.max_new_tokens,
            "n": decoding.num_return_sequences,
            "temperature": decoding.temperature if decoding.do_sample else 0.0,
        }
        if decoding.do_sample:
            body["top_p"] = decoding.top_p
            body["seed"] = decoding.seed
        elif decoding.num_beams > 1:
            body["num_beams"] = decoding.num_beams  # (gentune serve; others may ignore it)
        if self.model:
            body["model"] = self.model
        if self.api == "chat":
            content = f"{self.instruction}\n\n{text}" if self.instruction else text
            body["messages"] = [{"role": "user", "content": content}]
        else:
            body["prompt"] = text
        return body

    def request(self, text: str, decoding: Decoding) -> tuple[list[str], list[bool]]:
        """(candidates, stopped-by-EOS flags) for one input. Retries connection errors, time-
        outs, 429 and 5xx with exponential back-off; raises TeacherError (unreachable) or
        ValueError (this row refused, e.g. a 400)."""
        data = json.dumps(self.body(text, decoding)).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * (1 + random.random() / 2))
            req = urllib.request.Request(self.endpoint, data=data, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    answer = json.loads(resp.read())
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode(errors="replace")
                if e.code in (401, 403):  # the same for every row: stop at once
                    raise TeacherError(
                        f"teacher {self.endpoint}: HTTP {e.code} ({detail}); check "
                        "--teacher-api-key (or $OPENAI_API_KEY)"
                    ) from None
                if e.code in (404, 405):
                    raise TeacherError(
                        f"teacher {self.endpoint}: HTTP {e.code}: no such endpoint; give the "
                        "server's base URL (http://HOST:PORT or .../v1) and the --teacher-api "
                        "it serves (completions or chat)"
                    ) from None
                if e.code == 429 or e.code >= 500:
                    last = f"HTTP {e.code}: {detail}"
                    continue
                raise ValueError(f"HTTP {e.code}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = str(getattr(e, "reason", e))
                continue
            choices = answer.get("choices") or []
            texts = [
                (c.get("message") or {}).get("content", "")
                if self.api == "chat"
                else c.get("text", "")
                for c in choices
            ]
            return [t.strip() for t in texts], [c.get("finish_reason") == "stop" for c in choices]
        raise TeacherError(
            f"teacher {self.endpoint} did not answer after {self.retries + 1} attempts ({last})"
        )


def word_count(text: str) -> int:
    """Words, split at whitespace (the length filters' unit: any teacher's output has them)."""
    return len(text.split())


def make_teacher(s):
    """An HttpTeacher for an http(s) URL, else a LocalTeacher loaded here (`s`: the
    distillation's settings)."""
    if s.teacher.startswith(("http://", "https://")):
        return HttpTeacher(
            s.teacher,
            api=s.teacher_api,
            model=s.teacher_model,
            api_key=s.teacher_api_key or os.environ.get("OPENAI_API_KEY"),
            instruction=s.instruction,
            concurrency=s.concurrency,
            retries=s.retries,
        )
    return LocalTeacher(
        s.teacher,
        task=s.task,
        instruction=s.instruction,
        source_lang=s.source_lang,
        target_lang=s.target_lang,
    )


def label_decoding(s, teacher, gold_targets: list[str] | None) -> Decoding:
    """Greedy, beams (candidates > 1) or sampling; new tokens from --max-new-tokens, the local
    teacher's own cap, or 1.5x the gold targets' longest words x 2 tokens per word."""
    if s.max_new_tokens:
        cap = s.max_new_tokens
    elif isinstance(teacher, LocalTeacher):
        cap = teacher.template.new_tokens_cap()[0]
    elif gold_targets:
        cap = int(3 * max(word_count(t) for t in gold_targets)) + 8
    else:
        cap = 128
    n = s.candidates
    if s.sample:
        return Decoding(
            max_new_tokens=cap, do_sample=True, temperature=s.temperature, num_return_sequences=n
        )
    return Decoding(max_new_tokens=cap, num_beams=n, num_return_sequences=n)
