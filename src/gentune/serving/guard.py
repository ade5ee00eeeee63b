"""The server's HTTP edge, before a request reaches a route: the API key, the body size limit
and body timeout (ASGI middleware), a deadline for request headers (uvicorn's HTTP protocol),
and a check that the address can be listened on."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json

from gentune.errors import UsageError


class Guard:
    """ASGI middleware: the API key (every route but /health) and the request body limit.

    The key is accepted as `Authorization: Bearer KEY` (OpenAI clients) or HTTP Basic with the
    key as password (so a browser can open the playground: it asks once). The body is read here
    up to the limit and handed on; past the limit the answer is 413 without reading further.
    """

    def __init__(
        self, app, *, api_key: str | None, max_body_bytes: int, body_timeout: float = 30.0
    ):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        if self.api_key and scope["path"] != "/health" and not self._authorized(headers):
            challenge = 'Basic realm="gentune"' if scope["path"] == "/" else "Bearer"
            return await _reply(
                send,
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                "authentication_error",
                {"www-authenticate": challenge},
            )
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            return await _reply(send, 413, _too_big(self.max_body), "invalid_request_error")
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body, more = bytearray(), True
            deadline = asyncio.get_running_loop().time() + self.body_timeout
            while more:
                left = deadline - asyncio.get_running_loop().time()
                try:  # the whole body within body_timeout: a slow client cannot hold on
                    message = await asyncio.wait_for(receive(), timeout=max(left, 0))
                except TimeoutError:
                    return await _reply(
                        send,
                        408,
                        "the request body did not arrive within "
                        f"{self.body_timeout:g} s (gentune serve "
                        "--body-timeout)",
                        "invalid_request_error",
                        {"connection": "close"},
                    )
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_body:
                    return await _reply(send, 413, _too_big(self.max_body), "invalid_request_error")
            replay = [{"type": "http.request", "body": bytes(body), "more_body": False}]

            async def receive_again():
                return replay.pop() if replay else await receive()

            return await self.app(scope, receive_again, send)
        return await self.app(scope, receive, send)

    def _authorized(self, headers: dict) -> bool:
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        given = ""
        if scheme.lower() == "bearer":
            given = value.strip()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip()).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                given = ""
        return hmac.compare_digest(given.encode(), (self.api_key or "").encode())


def _too_big(limit: int) -> str:
    return f"request body over the limit of {limit} bytes (gentune serve --max-body-bytes)"


async def _reply(send, status: int, message: str, kind: str, headers: dict | None = None):
    body = json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": None}}
    ).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def timed_protocol(header_timeout: float):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers: a client that
    connects and sends its headers slowly (or never) is disconnected after `header_timeout`
    seconds, so slow clients cannot hold connections (uvicorn only times out idle keep-alive)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _header_timer = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # no complete request headers in time

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # the headers are in

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's headers on this connection

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol


def check_port(host: str, port: int) -> None:
    """Fail before the model loads when the address cannot be listened on."""
    import socket

    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(info[0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(info[4])
    except OSError as e:
        raise UsageError(
            f"--host {host} --port {port}: cannot listen there ({e.strerror or e});"
            " choose another --port, or stop what is using it"
        ) from None
