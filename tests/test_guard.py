"""The server's HTTP edge: the API key on every route but /health, the body limit, slow clients cut off."""

from __future__ import annotations

import base64
import socket
import time

import httpx

from .serving import AUTH, KEY, client, live_server


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
