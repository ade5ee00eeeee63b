"""The server's queue: 429 when full, 504 past the deadline (waiting or generating), a failing generation is its requests' 500, greedy requests batched with the same answers, a closed stream stops its generation."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager

import httpx

from gentune.inference.load import load_for_inference
from gentune.serving import scheduler as scheduler_module
from gentune.serving.app import ServeSettings, create_app

from .conftest import PAIRS
from .serving import AUTH, PROMPT, client, sse_events


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
    from gentune.inference.generate import generate, stream

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


def test_closing_a_stream_stops_its_generation(tiny_llama):
    """A streaming client that leaves: the iterator is closed, the generation thread ends at
    the next token instead of running to max_new_tokens."""
    from gentune.config import Decoding
    from gentune.inference.generate import stream

    loaded = load_for_inference(tiny_llama)  # random weights: never says EOS by itself
    calls = []
    hook = loaded.model.register_forward_hook(lambda *a: calls.append(1))
    pieces = stream(loaded.model, loaded.tokenizer, [5, 6, 7, 8], Decoding(max_new_tokens=200))
    next(pieces)
    pieces.close()  # returns once the generation thread has ended
    hook.remove()
    assert len(calls) < 100


def test_stream_timeouts(loaded, monkeypatch):
    """Waiting past the deadline: a plain 504 (the stream has not started). Past it while
    streaming: the status is sent already, so an error event says it, then [DONE]."""
    from gentune.inference.generate import Generation

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


BODY = {"prompt": PROMPT, "max_tokens": 4}
