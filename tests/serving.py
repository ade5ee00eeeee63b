"""Helpers shared by the server's tests: an in-process client, SSE parsing, a live uvicorn on loopback, and the CLI's answer to compare with."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager

from gentune.cli import main
from gentune.serving.app import ServeSettings, create_app

from .conftest import PAIRS

KEY = "sk-test-key"


AUTH = {"Authorization": f"Bearer {KEY}"}


PROMPT = PAIRS[0]["input"]


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


# ---- a live server on loopback, and the official openai client ------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(loaded, **settings):
    import uvicorn

    from gentune.serving.app import server_config

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
