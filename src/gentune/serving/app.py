"""`gentune serve`: an OpenAI-compatible HTTP API and a playground page (FastAPI + uvicorn).

    GET  /                      the playground (plain HTML + JS served from here, nothing external)
    GET  /health                liveness and queue figures (the one route open without a key)
    GET  /v1/models             the served model
    POST /v1/completions        prompt(s) → text, through the model's task template
    POST /v1/chat/completions   messages → reply, through the model's chat template; `stream`

Prompts go through the same template, `encode_prompt` and `generate()` as `gentune generate`, so
the answer is the same. Safe by default: loopback only unless told; with an API key every route
but /health needs it; bodies over a limit → 413; max_tokens over a limit or past the context →
400; malformed JSON or fields → 422; a full queue → 429 at once; a per-request timeout → 504.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from importlib.resources import files

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from gentune.config import Decoding, ServeSettings
from gentune.data.records import Record
from gentune.data.tasks import PromptTemplate, chat_template_for, prompt_record
from gentune.errors import DataError
from gentune.inference.generate import Generation, default_decoding, encode_prompts
from gentune.inference.load import Loaded, load_for_inference, resolve_template
from gentune.models.families import template_options
from gentune.models.load import context_length
from gentune.serving.guard import Guard, check_port, timed_protocol
from gentune.serving.openai_api import (
    ChatRequest,
    CompletionRequest,
    RequestError,
    chat_chunk,
    chat_completion,
    completion,
    completion_chunk,
    usage,
)
from gentune.serving.scheduler import Busy, GenerationFailed, Job, Scheduler, TimedOut

log = logging.getLogger("gentune.serve")


def templates(loaded: Loaded, task: str | None) -> tuple[PromptTemplate, PromptTemplate]:
    """(template for /v1/completions, template for /v1/chat/completions).

    A run or exported directory brings its own; a plain model gets the task's (dialogue when
    its tokenizer has a chat template, free text otherwise). Chat requests use the run's
    template unless it is a free-text one, which has no turns.
    """
    tok = loaded.tokenizer
    if loaded.template is None and not task:
        task = "dialogue" if getattr(tok, "chat_template", None) else "text"
    completion = resolve_template(loaded, task)
    return completion, chat_template_for(completion, tok, **template_options(loaded.model))


class _NotFound(Exception):
    """A model id this server does not serve (404)."""


@dataclass
class Served:
    """What the routes share: the model, its templates and limits, and the queue."""

    loaded: Loaded
    settings: ServeSettings
    completion_tpl: PromptTemplate
    chat_tpl: PromptTemplate
    context: int
    name: str
    created: int
    scheduler: Scheduler

    def check_model(self, body) -> None:
        if body.model not in (None, "", self.name):
            raise _NotFound(
                f"model {body.model!r} is not served here; this server serves "
                f"{self.name!r} (GET /v1/models)"
            )

    def decoding(self, body, template: PromptTemplate) -> Decoding:
        d = body.decoding(
            default_decoding(template), max_tokens_limit=self.settings.max_tokens_limit
        )
        if d.do_sample and body.seed is None:  # as OpenAI: unseeded sampling differs per call
            d = replace(d, seed=secrets.randbelow(2**31))
        return d

    def encode(
        self, record: Record, template: PromptTemplate, decoding: Decoding, param: str
    ) -> tuple[list[int], bool]:
        """The prompt's ids, shortened only as the run's training shortened inputs (its
        max_length, as `gentune generate` does), never to squeeze into the context (that is a
        400); a template that cannot render these messages is the request's fault (400)."""
        try:
            [(ids, _, shortened)] = encode_prompts(
                [record],
                template,
                self.loaded.tokenizer,
                self.loaded.model,
                decoding.max_new_tokens,
                context=10**9,  # shortened as training did, never to fit: too long is a 400
            )
        except DataError as e:
            raise RequestError(str(e).removeprefix(f"{record.where}: "), param) from None
        except Exception as e:  # noqa: BLE001 — jinja errors have no common base we import
            raise RequestError(
                f"the messages cannot be rendered with the model's template: "
                f"{type(e).__name__}: {e}",
                param,
            ) from None
        return ids, shortened

    def fit(self, ids: list[int], body, decoding: Decoding, where: str) -> Decoding:
        """Check prompt + output against the context (400), or shrink an unasked default."""
        room = self.context - len(ids)
        asked = body.requested_tokens()
        if asked is not None and asked > room or room < 1:
            raise RequestError(
                f"{where}: the prompt has {len(ids)} tokens and max_tokens is "
                f"{asked or decoding.max_new_tokens}, together more than the model's context "
                f"of {self.context} tokens; shorten the prompt or lower max_tokens",
                "max_tokens",
            )
        return replace(decoding, max_new_tokens=min(decoding.max_new_tokens, room))

    def within_prompt_limit(self, prompts: list[list[int]], param: str) -> None:
        """A request buys at most `max_prompt_tokens` of prefill, summed over its prompts."""
        n, limit = sum(map(len, prompts)), self.settings.max_prompt_tokens
        if n > limit:
            raise RequestError(
                f"the request's prompts have {n} tokens in all, over this server's limit of "
                f"{limit} (gentune serve --max-prompt-tokens); send fewer or shorter prompts",
                param,
            )

    def job(self, prompts: list[list[int]], decoding: Decoding) -> Job:
        return Job(
            prompts=prompts, decoding=decoding, deadline=time.monotonic() + self.settings.timeout
        )


def create_app(loaded: Loaded, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving `loaded`: routes, error handlers, API key and body limits."""
    settings = settings or ServeSettings()
    completion_tpl, chat_tpl = templates(loaded, settings.task)
    scheduler = Scheduler(
        loaded.model, loaded.tokenizer, max_batch=settings.max_batch, max_queue=settings.max_queue
    )
    served = Served(
        loaded,
        settings,
        completion_tpl,
        chat_tpl,
        context_length(loaded.model),
        settings.model_name or _default_name(loaded),
        int(time.time()),
        scheduler,
    )

    @asynccontextmanager
    async def lifespan(app):
        yield
        scheduler.close()

    app = FastAPI(title="gentune", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.served, app.state.scheduler, app.state.model_name = served, scheduler, served.name
    app.add_middleware(
        Guard,
        api_key=settings.api_key,
        max_body_bytes=settings.max_body_bytes,
        body_timeout=settings.body_timeout,
    )
    for kind, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(kind, handler)
    app.include_router(routes)
    return app


# ---- errors, all in OpenAI's shape {"error": {message, type, param, code}} ------------------
def error(status: int, message: str, kind: str, param=None, code=None, headers=None):
    """An error response in OpenAI's shape."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status_code=status,
        headers=headers,
    )


async def _invalid(request, exc: RequestValidationError):
    problems = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        if e.get("type") == "json_invalid":
            ctx = e.get("ctx") or {}
            problems.append(f"malformed JSON: {ctx.get('error', e.get('msg'))}")
        elif e.get("type") == "extra_forbidden":
            problems.append(f"{where}: unknown field")
        else:
            problems.append(f"{where or 'body'}: {e.get('msg')}")
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or None
    return error(
        422,
        "; ".join(problems) or "invalid request",
        "invalid_request_error",
        param,
        "invalid_body",
    )


async def _timed_out(request, exc: TimedOut):
    timeout = request.app.state.served.settings.timeout
    return error(
        504,
        f"{exc} ({timeout:g} s, gentune serve --timeout); lower max_tokens or retry",
        "timeout",
        code="timeout",
    )


async def _crashed(request, exc: Exception):
    log.exception("request failed")
    return error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")


ERROR_HANDLERS = {
    RequestValidationError: _invalid,
    HTTPException: lambda request, exc: error(
        exc.status_code,
        str(exc.detail),
        "invalid_request_error",
        headers=getattr(exc, "headers", None),
    ),
    RequestError: lambda request, exc: error(400, str(exc), "invalid_request_error", exc.param),
    Busy: lambda request, exc: error(
        429, str(exc), "server_busy", code="queue_full", headers={"Retry-After": "1"}
    ),
    TimedOut: _timed_out,
    _NotFound: lambda request, exc: error(
        404, str(exc), "invalid_request_error", "model", "model_not_found"
    ),
    GenerationFailed: lambda request, exc: error(
        500, str(exc), "server_error", code="generation_failed"
    ),
    Exception: _crashed,
}


# ---- streaming ------------------------------------------------------------------------------
def sse(obj) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def streamed(served: Served, job: Job, prompt_tokens: int, chunk, include_usage: bool):
    """Server-sent events: the pieces, a final chunk with finish_reason, [DONE]. The response
    starts once the first piece is there, so a full queue (429) or a timeout while waiting
    (504) is still an HTTP status."""
    pieces = served.scheduler.stream(job)
    try:
        first = await anext(pieces)
    except StopAsyncIteration:
        first = None

    async def events():
        opening = chunk(None, None, start=True)
        if opening:
            yield sse(opening)
        item = first
        try:
            while item is not None:
                if isinstance(item, Generation):
                    yield sse(chunk(None, _reason(item)))
                    if include_usage:
                        yield sse(
                            {
                                **chunk(None, None),
                                "choices": [],
                                "usage": usage(prompt_tokens, item.new_tokens),
                            }
                        )
                    break
                if item:
                    yield sse(chunk(item, None))
                item = await anext(pieces, None)
        except Exception as e:  # noqa: BLE001 — the status is sent already: say it here
            kind = "timeout" if isinstance(e, TimedOut) else "server_error"
            yield sse({"error": {"message": str(e), "type": kind}})
        finally:
            await pieces.aclose()
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# ---- routes ---------------------------------------------------------------------------------
routes = APIRouter()


@routes.get("/health")
async def health(request: Request):
    """Liveness and the queue's figures (open without a key)."""
    s = request.app.state.served
    return {"status": "ok", "model": s.name, "context": s.context, **s.scheduler.stats()}


@routes.get("/v1/models")
async def models(request: Request):
    """The one served model."""
    s = request.app.state.served
    return {
        "object": "list",
        "data": [
            {
                "id": s.name,
                "object": "model",
                "created": s.created,
                "owned_by": "gentune",
                "context_length": s.context,
                "task": s.completion_tpl.task,
            }
        ],
    }


@routes.get("/v1/models/{model_id:path}")
async def one_model(model_id: str, request: Request):
    """The served model by id (404 for any other)."""
    s = request.app.state.served
    if model_id != s.name:
        raise _NotFound(f"model {model_id!r} is not served here; this server serves {s.name!r}")
    return {"id": s.name, "object": "model", "created": s.created, "owned_by": "gentune"}


@routes.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    """POST /v1/completions: prompts through the task template (or raw), batched."""
    s: Served = request.app.state.served
    s.check_model(body)
    texts = body.prompts()
    decoding = s.decoding(body, s.completion_tpl)
    prompts, shortened = [], 0
    for i, text in enumerate(texts):
        where = f"prompt {i}" if len(texts) > 1 else "prompt"
        if body.raw:
            ids = s.loaded.tokenizer(text, add_special_tokens=True)["input_ids"]
            if not ids:
                raise RequestError(
                    f"{where} is empty: a raw prompt needs at least one token", "prompt"
                )
        else:
            ids, short = s.encode(
                prompt_record(s.completion_tpl, text, row=i + 1),
                s.completion_tpl,
                decoding,
                "prompt",
            )
            shortened += short
        decoding = s.fit(ids, body, decoding, where)
        prompts.append(ids)
    s.within_prompt_limit(prompts, "prompt")
    rid, n_prompt = f"cmpl-{secrets.token_hex(12)}", sum(map(len, prompts))
    if body.stream:
        return await streamed(
            s,
            s.job(prompts, decoding),
            n_prompt,
            partial(completion_chunk, rid, s.name),
            _usage_wanted(body),
        )
    gens = await s.scheduler.complete(s.job(prompts, decoding))
    return {
        **completion(
            rid,
            s.name,
            [(g.text, _reason(g)) for g in gens],
            usage(n_prompt, sum(g.new_tokens for g in gens)),
        ),
        **_shortened(shortened),
    }


@routes.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    """POST /v1/chat/completions: messages through the chat template."""
    s: Served = request.app.state.served
    s.check_model(body)
    record = Record(source="<chat>", row=1, messages=body.conversation())
    decoding = s.decoding(body, s.chat_tpl)
    ids, shortened = s.encode(record, s.chat_tpl, decoding, "messages")
    decoding = s.fit(ids, body, decoding, "messages")
    s.within_prompt_limit([ids], "messages")
    rid = f"chatcmpl-{secrets.token_hex(12)}"
    if body.stream:
        return await streamed(
            s,
            s.job([ids], decoding),
            len(ids),
            partial(chat_chunk, rid, s.name),
            _usage_wanted(body),
        )
    gens = await s.scheduler.complete(s.job([ids], decoding))
    return {
        **chat_completion(
            rid,
            s.name,
            [(g.text, _reason(g)) for g in gens],
            usage(len(ids), sum(g.new_tokens for g in gens)),
        ),
        **_shortened(shortened),
    }


@routes.get("/", response_class=HTMLResponse)
async def playground():
    """The playground page, with a strict content security policy."""
    page = files("gentune.serving").joinpath("static/playground.html").read_text()
    return HTMLResponse(
        page,
        headers={
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def _default_name(loaded: Loaded) -> str:
    from pathlib import Path

    spec = str(loaded.name).rstrip("/")
    return Path(spec).name if Path(spec).exists() else spec


def _shortened(n: int) -> dict:
    """Nothing is cut silently: prompts shortened to the run's training length are counted."""
    return {"gentune": {"prompts_shortened": n}} if n else {}


def _reason(g: Generation) -> str:
    return "stop" if g.finished else "length"


def _usage_wanted(body) -> bool:
    return bool((body.stream_options or {}).get("include_usage"))


def serve(
    spec: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    precision: str = "fp32",
    quantize: str | None = None,
) -> None:
    """Load the model and serve it until interrupted."""
    import uvicorn

    settings = settings or ServeSettings()
    check_port(host, port)

    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        import sys

        print(
            f"gentune serve: warning: listening on {host} without an API key: anyone who "
            "can reach this machine can use the model (set --api-key or GENTUNE_API_KEY)",
            file=sys.stderr,
            flush=True,
        )
    loaded = load_for_inference(spec, precision=precision, quantize=quantize)
    app = create_app(loaded, settings)
    print(
        f"gentune: serving {app.state.model_name} on http://{host}:{port}/ "
        f"(playground at /, API at /v1)",
        flush=True,
    )
    uvicorn.Server(server_config(app, host=host, port=port, settings=settings)).run()


def server_config(app, *, host: str, port: int, settings: ServeSettings, log_level: str = "info"):
    """uvicorn's settings for the app: the header deadline and idle keep-alive."""
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, http=timed_protocol(settings.header_timeout)
    )
