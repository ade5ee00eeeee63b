"""gentune serve: every status it promises, streaming, and the same answer as `gentune generate`
(in-process over ASGI), then the official openai client against a live server on loopback."""

from __future__ import annotations

import httpx
import pytest

from gentune.cli import main
from gentune.inference.load import load_for_inference
from gentune.serving.app import create_app

from .conftest import PAIRS
from .serving import AUTH, KEY, PROMPT, cli_generate, client, live_server, sse_events


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


def test_playground_page_is_self_contained(loaded):
    with client(loaded) as c:
        r = c.get("/", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for needed in ('id="prompt"', 'id="send"', 'id="log"', 'id="temperature"', "getReader"):
        assert needed in page
    assert "http://" not in page and "https://" not in page and "src=" not in page
    assert "connect-src 'self'" in r.headers["content-security-policy"]


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
    import gentune.serving.app as serve_module

    seen = {}
    monkeypatch.setattr(
        serve_module,
        "serve",
        lambda spec, host, port, settings, precision, quantize: seen.update(
            spec=spec, host=host, port=port, settings=settings, precision=precision, q=quantize
        ),
    )
    monkeypatch.setenv("GENTUNE_API_KEY", "from-env")
    assert main(["serve", trained_run]) == 0
    assert seen["precision"] == "fp32" and seen["q"] is None  # bf16 / int8 are asked for
    assert seen["host"] == "127.0.0.1" and seen["settings"].api_key == "from-env"
    assert main(["serve", trained_run, "--api-key", "flag", "--max-queue", "3"]) == 0
    assert seen["settings"].api_key == "flag" and seen["settings"].max_queue == 3
    assert main(["serve", trained_run, "--max-batch", "0"]) == 2


def test_serves_an_exported_directory_with_its_template(trained_run, tmp_path):
    from fastapi.testclient import TestClient

    from gentune.inference.export import export

    out, _ = export(trained_run, tmp_path / "exported")
    app = create_app(load_for_inference(str(out)))
    with TestClient(app) as c:
        models = c.get("/v1/models").json()["data"][0]
        assert models["id"] == "exported" and models["task"] == "summarization"
        r = c.post("/v1/completions", json={"prompt": PROMPT})
        assert r.json()["choices"][0]["text"] == "Fox jumps dog."
