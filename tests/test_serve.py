"""gentune serve: every status it promises, streaming, and the same answer as `gentune generate`
(in-process over ASGI), then the official openai client against a live server on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest

from gentune import scheduler as scheduler_module
from gentune.cli import main
from gentune.runs import load_for_inference
from gentune.serve import ServeSettings, create_app

from .conftest import PAIRS

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = PAIRS[0]["input"]


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load_for_inference(trained_run)


@contextmanager
def client(loaded, **settings):
    from fastapi.testclient import TestClient

    app = create_app(loaded, ServeSettings(**{"api_key": KEY, **settings}))
    with TestClient(app) as c:
        yield c


def sse_events(text: str) -> list:
    events = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def cli_generate(run: str, prompt: str, capsys, *extra) -> str:
    capsys.readouterr()
    assert main(["generate", run, prompt, *extra]) == 0
    return capsys.readouterr().out.rstrip("\n")


def test_completion_chat_and_stream_match_gentune_generate(trained_run, loaded, capsys):
    want = cli_generate(trained_run, PROMPT, capsys)  # streamed by the CLI
    assert want == "Fox jumps dog."  # the tiny model learnt its data: a real answer to match
    assert cli_generate(trained_run, PROMPT, capsys, "--no-stream") == want
    with client(loaded) as c:
        r = c.post("/v1/completions", headers=AUTH, json={"prompt": PROMPT})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "text_completion"
        assert body["choices"][0]["text"] == want
        assert body["choices"][0]["finish_reason"] == "stop"  # stopped by EOS
        assert body["usage"]["completion_tokens"] > 0
        assert body["usage"]["total_tokens"] == (
            body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        )

        # several prompts in one request: each answered as alone
        prompts = [p["input"] for p in PAIRS[:5]]
        r = c.post("/v1/completions", headers=AUTH, json={"prompt": prompts})
        texts = [ch["text"] for ch in r.json()["choices"]]
        assert texts == [cli_generate(trained_run, p, capsys, "--no-stream") for p in prompts]

        # chat: the run's chat template around the same user content gives the same answer
        instruction = loaded.template.instruction
        msgs = [{"role": "user", "content": f"{instruction}\n\n{PROMPT}"}]
        r = c.post("/v1/chat/completions", headers=AUTH, json={"messages": msgs})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"] == {"role": "assistant", "content": want}

        # streamed chat: role first, pieces, finish_reason, usage, [DONE]; same text
        r = c.post(
            "/v1/chat/completions",
            headers=AUTH,
            json={"messages": msgs, "stream": True, "stream_options": {"include_usage": True}},
        )
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
        pieces = [ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"]]
        assert len([p for p in pieces if p]) > 1  # really streamed, piece by piece
        assert "".join(pieces) == want
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["usage"]["completion_tokens"] > 0

        # streamed completion: same text
        r = c.post("/v1/completions", headers=AUTH, json={"prompt": PROMPT, "stream": True})
        events = sse_events(r.text)
        assert "".join(e["choices"][0]["text"] for e in events[:-1]) == want


def test_decoding_options_pass_through(loaded):
    with client(loaded) as c:
        r = c.post("/v1/completions", headers=AUTH, json={"prompt": PROMPT, "max_tokens": 2})
        ch = r.json()["choices"][0]
        assert ch["finish_reason"] == "length" and r.json()["usage"]["completion_tokens"] == 2
        r = c.post("/v1/completions", headers=AUTH, json={"prompt": PROMPT, "stop": ["jumps"]})
        assert r.json()["choices"][0]["text"] == "Fox"
        r = c.post(
            "/v1/completions",
            headers=AUTH,
            json={"prompt": PROMPT, "stop": "jumps", "stream": True},
        )
        events = sse_events(r.text)
        assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "Fox"
        assert events[-2]["choices"][0]["finish_reason"] == "stop"
        r = c.post(
            "/v1/completions",
            headers=AUTH,  # untemplated: the text as it is
            json={"prompt": PROMPT, "raw": True, "max_tokens": 3},
        )
        assert r.json()["usage"]["prompt_tokens"] == len(loaded.tokenizer(PROMPT)["input_ids"])
        sampled = {"prompt": PROMPT, "temperature": 1.5, "seed": 3, "n": 3, "max_tokens": 8}
        a = c.post("/v1/completions", headers=AUTH, json=sampled).json()["choices"]
        b = c.post("/v1/completions", headers=AUTH, json=sampled).json()["choices"]
        assert len(a) == 3 and [x["text"] for x in a] == [x["text"] for x in b]  # seeded
        beams = c.post(
            "/v1/completions", headers=AUTH, json={"prompt": PROMPT, "num_beams": 3, "n": 2}
        ).json()
        assert len(beams["choices"]) == 2
        models = c.get("/v1/models", headers=AUTH).json()
        name = models["data"][0]["id"]
        assert (
            c.post("/v1/completions", headers=AUTH, json={"prompt": "x", "model": name}).status_code
            == 200
        )


def test_auth_every_route_but_health(loaded):
    with client(loaded) as c:
        assert c.get("/health").status_code == 200
        for method, path in [
            ("get", "/"),
            ("get", "/v1/models"),
            ("post", "/v1/completions"),
            ("post", "/v1/chat/completions"),
            ("get", "/nowhere"),
            ("get", "/openapi.json"),
        ]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                r = getattr(c, method)(path, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert "API key" in r.json()["error"]["message"]
        assert c.get("/").headers["www-authenticate"].startswith("Basic")  # browsers ask
        basic = base64.b64encode(f"me:{KEY}".encode()).decode()
        assert c.get("/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        assert c.get("/v1/models", headers=AUTH).status_code == 200
    with client(loaded, api_key=None) as c:  # no key configured: open
        assert c.get("/v1/models").status_code == 200


def test_playground_page_is_self_contained(loaded):
    with client(loaded) as c:
        r = c.get("/", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for needed in ('id="prompt"', 'id="send"', 'id="log"', 'id="temperature"', "getReader"):
        assert needed in page
    assert "http://" not in page and "https://" not in page and "src=" not in page
    assert "connect-src 'self'" in r.headers["content-security-policy"]


def test_body_limit_413(loaded):
    with client(loaded, max_body_bytes=2000) as c:
        big = {"prompt": "x" * 5000}
        r = c.post("/v1/completions", headers=AUTH, json=big)
        assert r.status_code == 413 and "2000 bytes" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit holds on the bytes actually read
            for _ in range(10):
                yield b" " * 500

        r = c.post("/v1/completions", headers=AUTH, content=chunks())
        assert r.status_code == 413
        assert (
            c.post(
                "/v1/completions", headers=AUTH, json={"prompt": "hello", "max_tokens": 2}
            ).status_code
            == 200
        )


def test_400_limits_and_unsupported(loaded):
    with client(loaded, max_tokens_limit=64) as c:

        def post(path, **body):
            return c.post(path, headers=AUTH, json=body)

        r = post("/v1/completions", prompt="hi", max_tokens=65)
        assert r.status_code == 400 and "max-tokens-limit" in r.json()["error"]["message"]
        assert r.json()["error"]["param"] == "max_tokens"
        msgs = [{"role": "user", "content": "the lazy dog " * 40}]  # ~ 235 of 256 tokens
        r = post("/v1/chat/completions", messages=msgs, max_tokens=60)
        assert r.status_code == 400
        assert "context of 256 tokens" in r.json()["error"]["message"]
        r = post("/v1/chat/completions", messages=[{"role": "user", "content": "dog " * 400}])
        # past the run's training length: shortened as `gentune generate` shortens it, counted
        assert r.status_code == 200 and r.json()["gentune"]["prompts_shortened"] == 1
        assert post("/v1/chat/completions", messages=msgs).status_code == 200  # shrunk default
        assert post("/v1/completions", prompt="hi", presence_penalty=0.5).status_code == 400
        assert post("/v1/completions", prompt="hi", logprobs=3).status_code == 400
        assert post("/v1/completions", prompt="hi", n=2).status_code == 400  # greedy twice
        assert (
            post("/v1/completions", prompt="hi", n=2, temperature=0.7, stream=True).status_code
            == 400
        )
        assert post("/v1/completions", prompt="hi", echo=True).status_code == 400
        r = post("/v1/completions", prompt="hi", model="gpt-4")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = post(
            "/v1/chat/completions",
            messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        )
        assert r.status_code == 400


def test_422_malformed_json_and_fields(loaded):
    with client(loaded) as c:

        def raw(path, data):
            return c.post(path, headers={**AUTH, "Content-Type": "application/json"}, content=data)

        r = raw("/v1/chat/completions", b'{"messages": [')
        assert r.status_code == 422 and "malformed JSON" in r.json()["error"]["message"]
        cases = [
            ("/v1/chat/completions", {}),  # messages missing
            ("/v1/chat/completions", {"messages": []}),
            ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}),
            ("/v1/chat/completions", {"messages": [{"role": "user"}]}),
            ("/v1/chat/completions", {"messages": "hello"}),
            ("/v1/completions", {"prompt": "x", "max_tokens": "many"}),
            ("/v1/completions", {"prompt": "x", "max_tokens": 0}),
            ("/v1/completions", {"prompt": "x", "temperature": -1}),
            ("/v1/completions", {"prompt": "x", "top_p": 0}),
            ("/v1/completions", {"prompt": "x", "max_tokenz": 5}),  # a typo is not ignored
            ("/v1/completions", {"prompt": 5}),
        ]
        for path, body in cases:
            r = c.post(path, headers=AUTH, json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["error"]["type"] == "invalid_request_error"
        r = c.post("/v1/completions", headers=AUTH, json={"prompt": "x", "max_tokenz": 5})
        assert "max_tokenz: unknown field" in r.json()["error"]["message"]
        r = raw("/v1/completions", b"[1, 2]")
        assert r.status_code == 422
        assert c.get("/health").json()["status"] == "ok"  # still up


@contextmanager
def blocked_worker(monkeypatch):
    """Make generation wait for `release` (so queue states can be set up exactly)."""
    release = threading.Event()
    real = scheduler_module.generate

    def slow(*args, **kwargs):
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(scheduler_module, "generate", slow)
    try:
        yield release
    finally:
        release.set()


async def _wait_for(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.01)


BODY = {"prompt": PROMPT, "max_tokens": 4}


def asgi(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def occupy(c: httpx.AsyncClient, app) -> asyncio.Task:
    """Send a request and wait until the (blocked) worker is running it."""
    first = asyncio.create_task(c.post("/v1/completions", json=BODY))
    await _wait_for(lambda: app.state.scheduler.stats()["running"] == 1)
    return first


def test_full_queue_answers_429_at_once(loaded, monkeypatch):
    app = create_app(loaded, ServeSettings(max_queue=1, max_batch=1))
    sched = app.state.scheduler

    async def scenario(release):
        async with asgi(app) as c:
            first = await occupy(c, app)
            second = asyncio.create_task(c.post("/v1/completions", json=BODY))
            await _wait_for(lambda: sched.stats()["queued"] == 1)
            start = time.monotonic()
            third = await c.post("/v1/completions", json=BODY)
            refused_in = time.monotonic() - start
            stream = await c.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
            )
            health = await c.get("/health")
            release.set()
            return (await first, await second, third, refused_in, stream, health)

    with blocked_worker(monkeypatch) as release:
        first, second, third, refused_in, stream, health = asyncio.run(scenario(release))
    sched.close()
    assert third.status_code == 429 and refused_in < 1.0
    assert third.headers["retry-after"] == "1"
    assert "max-queue" in third.json()["error"]["message"]
    assert stream.status_code == 429  # a stream is refused before it starts
    assert health.status_code == 200 and health.json()["queued"] == 1
    assert first.status_code == 200 and second.status_code == 200  # nothing lost
    assert sched.stats()["refused_busy"] == 2


def test_request_timeout_504_then_still_serving(loaded, monkeypatch):
    app = create_app(loaded, ServeSettings(timeout=0.5, max_batch=1))
    sched = app.state.scheduler

    async def scenario(release):
        async with asgi(app) as c:
            first = await occupy(c, app)
            waiting = await c.post("/v1/completions", json=BODY)  # times out in the queue
            release.set()
            done = await first
            again = await c.post("/v1/completions", json=BODY)
            return waiting, done, again

    with blocked_worker(monkeypatch) as release:
        waiting, done, again = asyncio.run(scenario(release))
    sched.close()
    assert waiting.status_code == 504 and "timeout" in waiting.json()["error"]["message"]
    assert done.status_code == 504  # its generation started after its deadline
    assert again.status_code == 200


def test_generation_timeout_stops_the_generation(loaded):
    """Deadline during generation: the generation ends after the current token (504), the
    next request is served."""
    from gentune.config import Decoding
    from gentune.generate import generate, stream

    ids = [[5, 6, 7, 8], [9, 10, 11, 12, 13]]
    gens = generate(
        loaded.model,
        loaded.tokenizer,
        ids,
        Decoding(max_new_tokens=50),
        should_stop=lambda i: i == 1,
    )
    assert gens[1].new_tokens == 1 and not gens[1].finished
    assert gens[0].new_tokens > 1
    pieces = stream(
        loaded.model,
        loaded.tokenizer,
        ids[0],
        Decoding(max_new_tokens=50),
        should_stop=lambda: True,
    )
    while True:
        try:
            next(pieces)
        except StopIteration as e:
            assert e.value.new_tokens == 1
            break


def test_a_failing_generation_is_a_500_not_a_crash(loaded, monkeypatch):
    calls = []
    real = scheduler_module.generate

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(scheduler_module, "generate", flaky)
    with client(loaded) as c:
        r = c.post("/v1/completions", headers=AUTH, json={"prompt": PROMPT})
        assert r.status_code == 500 and "simulated failure" in r.json()["error"]["message"]
        r = c.post("/v1/completions", headers=AUTH, json={"prompt": PROMPT})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "Fox jumps dog."


def test_concurrent_greedy_requests_are_batched_with_the_same_answers(loaded, monkeypatch):
    sizes = []
    real = scheduler_module.generate

    def spy(model, tok, prompts, *args, **kwargs):
        sizes.append(len(prompts))
        return real(model, tok, prompts, *args, **kwargs)

    monkeypatch.setattr(scheduler_module, "generate", spy)
    app = create_app(loaded, ServeSettings(max_batch=8))

    async def scenario():
        async with asgi(app) as c:
            reqs = [c.post("/v1/completions", json={"prompt": p["input"]}) for p in PAIRS]
            return await asyncio.gather(*reqs)

    answers = asyncio.run(scenario())
    app.state.scheduler.close()
    assert [a.json()["choices"][0]["text"] for a in answers] == [p["output"] for p in PAIRS]
    assert max(sizes) > 1 and sum(sizes) == len(PAIRS)


# ---- a live server on loopback, and the official openai client ------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(loaded, **settings):
    import uvicorn

    from gentune.serve import server_config

    app = create_app(loaded, ServeSettings(**settings))
    port = free_port()
    server = uvicorn.Server(
        server_config(
            app,
            host="127.0.0.1",
            port=port,
            settings=ServeSettings(**settings),
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < end and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_official_openai_client_against_a_live_server(loaded):
    import openai

    with live_server(loaded, api_key=KEY) as url:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        [model] = api.models.list().data
        instruction = loaded.template.instruction
        msgs = [{"role": "user", "content": f"{instruction}\n\n{PROMPT}"}]
        reply = api.chat.completions.create(model=model.id, messages=msgs)
        assert reply.choices[0].message.content == "Fox jumps dog."
        assert reply.choices[0].finish_reason == "stop"
        assert reply.usage.completion_tokens > 0
        pieces = [
            ch.choices[0].delta.content or ""
            for ch in api.chat.completions.create(model=model.id, messages=msgs, stream=True)
            if ch.choices
        ]
        assert "".join(pieces) == "Fox jumps dog." and len([p for p in pieces if p]) > 1
        done = api.completions.create(model=model.id, prompt=PAIRS[1]["input"], max_tokens=20)
        assert done.choices[0].text == PAIRS[1]["output"]
        sampled = api.completions.create(
            model=model.id,
            prompt=PROMPT,
            max_tokens=5,
            temperature=0.8,
            extra_body={"top_k": 20, "min_p": 0.05},
        )
        assert sampled.usage.completion_tokens <= 5
        with pytest.raises(openai.BadRequestError):
            api.completions.create(model=model.id, prompt=PROMPT, max_tokens=10_000)
        with pytest.raises(openai.NotFoundError):
            api.completions.create(model="gpt-4", prompt=PROMPT)
        bad = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_cli_serve_defaults_to_loopback_and_reads_the_key_from_env(monkeypatch, trained_run):
    import gentune.serve as serve_module

    seen = {}
    monkeypatch.setattr(
        serve_module,
        "serve",
        lambda spec, host, port, settings: seen.update(
            spec=spec, host=host, port=port, settings=settings
        ),
    )
    monkeypatch.setenv("GENTUNE_API_KEY", "from-env")
    assert main(["serve", trained_run]) == 0
    assert seen["host"] == "127.0.0.1" and seen["settings"].api_key == "from-env"
    assert main(["serve", trained_run, "--api-key", "flag", "--max-queue", "3"]) == 0
    assert seen["settings"].api_key == "flag" and seen["settings"].max_queue == 3
    assert main(["serve", trained_run, "--max-batch", "0"]) == 2


def test_closing_a_stream_stops_its_generation(tiny_llama):
    """A streaming client that leaves: the iterator is closed, the generation thread ends at
    the next token instead of running to max_new_tokens."""
    from gentune.config import Decoding
    from gentune.generate import stream

    loaded = load_for_inference(tiny_llama)  # random weights: never says EOS by itself
    calls = []
    hook = loaded.model.register_forward_hook(lambda *a: calls.append(1))
    pieces = stream(loaded.model, loaded.tokenizer, [5, 6, 7, 8], Decoding(max_new_tokens=200))
    next(pieces)
    pieces.close()  # returns once the generation thread has ended
    hook.remove()
    assert len(calls) < 100


def test_serves_an_exported_directory_with_its_template(trained_run, tmp_path):
    from fastapi.testclient import TestClient

    from gentune.export import export

    out = export(trained_run, tmp_path / "exported")
    app = create_app(load_for_inference(str(out)))
    with TestClient(app) as c:
        models = c.get("/v1/models").json()["data"][0]
        assert models["id"] == "exported" and models["task"] == "summarization"
        r = c.post("/v1/completions", json={"prompt": PROMPT})
        assert r.json()["choices"][0]["text"] == "Fox jumps dog."


def test_messages_the_template_refuses_are_a_400(loaded):
    from dataclasses import replace

    from .conftest import CHATML

    strict = (
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('conversations start with the user') }}{% endif %}" + CHATML
    )
    picky = replace(loaded, template=replace(loaded.template, chat_template=strict))
    with client(picky) as c:
        r = c.post(
            "/v1/chat/completions",
            headers=AUTH,
            json={
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"},
                ]
            },
        )
        assert r.status_code == 400
        assert "conversations start with the user" in r.json()["error"]["message"]
        r = c.post(
            "/v1/chat/completions",
            headers=AUTH,
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        )
        assert r.status_code == 200


def test_stream_timeouts(loaded, monkeypatch):
    """Waiting past the deadline: a plain 504 (the stream has not started). Past it while
    streaming: the status is sent already, so an error event says it, then [DONE]."""
    from gentune.generate import Generation

    app = create_app(loaded, ServeSettings(timeout=0.5, max_batch=1))
    chat = {"messages": [{"role": "user", "content": "hi"}], "stream": True}

    async def queued(release):
        async with asgi(app) as c:
            first = await occupy(c, app)
            waiting = await c.post("/v1/chat/completions", json=chat)
            release.set()
            await first
            return waiting

    with blocked_worker(monkeypatch) as release:
        waiting = asyncio.run(queued(release))
    assert waiting.status_code == 504

    def slow_stream(model, tok, prompt, decoding, should_stop):
        yield "Fox"  # stream() yields generate()'s text: no trailing space
        time.sleep(0.8)
        assert should_stop()  # the deadline has passed: the generation is told to stop
        return Generation(text="Fox", new_tokens=1, finished=False)

    monkeypatch.setattr(scheduler_module, "stream", slow_stream)

    async def late():
        async with asgi(app) as c:
            return await c.post("/v1/chat/completions", json=chat)

    r = asyncio.run(late())
    app.state.scheduler.close()
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == "[DONE]" and events[-2]["error"]["type"] == "timeout"
    assert events[1]["choices"][0]["delta"]["content"] == "Fox"


# ---- client input never gets a 500 --------------------------------------------------------
CHAT = [{"role": "user", "content": "hello world"}]
HOSTILE = [  # (route, body, status, field the answer must name)
    ("/v1/completions", {"prompt": PROMPT, "temperature": 1e-300}, 400, "temperature"),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": 1e-9}, 400, "temperature"),
    ("/v1/completions", {"prompt": PROMPT, "seed": 2**64}, 422, "seed"),
    ("/v1/completions", {"prompt": PROMPT, "seed": -(2**70)}, 422, "seed"),
    ("/v1/completions", {"prompt": "\ud800 lone surrogate"}, 422, "prompt"),
    ("/v1/completions", {"prompt": ["ok", "bad \udfff"]}, 422, "prompt"),
    ("/v1/completions", {"prompt": PROMPT, "stop": ["\ud83d"]}, 422, "stop"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x\udc00"}]},
        422,
        "messages",
    ),
    ("/v1/completions", {"prompt": PROMPT, "model": "\ud800"}, 422, "model"),
    ("/v1/completions", {"prompt": PROMPT, "user": "\ud800"}, 422, "user"),
    (
        "/v1/completions",
        {"prompt": PROMPT, "length_penalty": 1e308, "num_beams": 2},
        422,
        "length_penalty",
    ),
    (
        "/v1/completions",
        {"prompt": PROMPT, "repetition_penalty": 1e-300},
        422,
        "repetition_penalty",
    ),
    ("/v1/completions", {"prompt": PROMPT, "top_k": 2**80}, 422, "top_k"),
    (
        "/v1/completions",
        {"prompt": PROMPT, "no_repeat_ngram_size": 2**70},
        422,
        "no_repeat_ngram_size",
    ),
    ("/v1/completions", {"prompt": PROMPT, "stop": "x" * 10_000}, 400, "stop"),
    ("/v1/completions", {"prompt": [], "max_tokens": 3}, 422, "prompt"),
    ("/v1/completions", {"prompt": "", "raw": True, "max_tokens": 3}, 422, "prompt"),
    ("/v1/completions", {"prompt": [" ", ""], "raw": True, "max_tokens": 3}, 400, "prompt"),
    ("/v1/completions", {"prompt": PROMPT, "max_tokens": 2**70}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": PROMPT, "n": 2, "num_beams": 2, "top_p": 1e-300}, 200, None),
]


@pytest.mark.parametrize("route,body,status,field", HOSTILE)
def test_hostile_values_are_4xx_naming_the_field(loaded, route, body, status, field):
    with client(loaded) as c:
        r = c.post(
            route,
            headers={**AUTH, "content-type": "application/json"},
            content=json.dumps(body).encode(),
        )
        assert r.status_code == status, r.text
        if field:
            err = r.json()["error"]
            assert field in f"{err['param']} {err['message']}", r.text


@pytest.mark.parametrize(
    "raw,status",
    [
        (b'{"prompt": "x", "temperature": NaN}', 422),
        (b'{"prompt": "x", "length_penalty": Infinity}', 422),
        (b'{"prompt": "x", "top_p": -Infinity}', 422),
        (b'{"prompt": "caf\xe9"}', 400),
    ],
)
def test_non_finite_numbers_and_bad_bytes_are_4xx(loaded, raw, status):
    with client(loaded) as c:
        r = c.post(
            "/v1/completions", headers={**AUTH, "content-type": "application/json"}, content=raw
        )
        assert r.status_code == status, r.text
        assert r.json()["error"]["message"]


def test_prompt_tokens_per_request_are_bounded(loaded):
    one = len(loaded.tokenizer(PROMPT)["input_ids"])
    with client(loaded, max_prompt_tokens=8 * one) as c:
        r = c.post("/v1/completions", headers=AUTH, json={"prompt": [PROMPT] * 8, "max_tokens": 2})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "prompt" and "--max-prompt-tokens" in err["message"]
        assert f"limit of {8 * one}" in err["message"]
        r = c.post("/v1/completions", headers=AUTH, json={"prompt": [PROMPT] * 2, "max_tokens": 2})
        assert r.status_code == 200, r.text
    with client(loaded, max_prompt_tokens=2 * one) as c:
        r = c.post(
            "/v1/chat/completions",
            headers=AUTH,
            json={"messages": [{"role": "user", "content": PROMPT * 3}], "max_tokens": 2},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_slow_clients_are_cut_off(loaded):
    """A client that sends its headers (or its body) too slowly loses the connection (or gets
    408) instead of holding it."""
    with live_server(loaded, header_timeout=0.5, body_timeout=0.5) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            start = time.monotonic()
            assert s.recv(1024) == b""  # closed by the server
            assert time.monotonic() - start < 4
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b'application/json\r\nContent-Length: 100\r\n\r\n{"prompt":'
            )
            start = time.monotonic()
            reply = b""
            while chunk := s.recv(4096):  # until the server closes the connection
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408") and b"--body-timeout" in reply
            assert time.monotonic() - start < 4
        # a normal client on a kept-alive connection is still served
        with httpx.Client() as h:
            assert h.get(f"{url}/health").status_code == 200
            time.sleep(0.1)
            assert h.get(f"{url}/health").status_code == 200
