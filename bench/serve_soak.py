"""Soak test of `gentune serve`: a fixed time under a mix of well- and badly-behaved clients.

Starts `gentune serve MODEL` on a free loopback port (a separate process, as users run it) with
a short body timeout, then for --duration seconds runs, side by side:
- plain clients (chat completions, answered whole),
- streaming clients (read to the end),
- clients that disconnect mid-stream (read two chunks, then close the connection),
- oversize bodies (over --max-body-bytes: must be 413),
- malformed bodies (broken JSON, wrong field types: must be 4xx, never 5xx),
- slow senders (the body in pieces within the body timeout: must be answered; and one that
  stalls past it: must be 408).
It polls /health for the queue length all along and reads the server's RSS from /proc at the
start (after a warm-up) and at the end. Prints one table: requests and answers by kind, status
counts, p50/p99 latency of the well-behaved kinds, the largest queue seen against its limit, the
RSS at start and end; exits non-zero if any 5xx came back, the queue passed its limit, a request
was lost or the RSS grew by more than --rss-margin (relative).

    .venv/bin/python bench/serve_soak.py [--model smollm2-135m|RUN] [--duration 600]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict

sys.path.insert(0, os.path.dirname(__file__))
from serve_load import QUESTIONS, free_port, wait_ready  # noqa: E402


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Tally:
    def __init__(self) -> None:
        self.status: dict[str, Counter] = defaultdict(Counter)
        self.latency: dict[str, list[float]] = defaultdict(list)

    def add(self, kind: str, status: int | str, seconds: float | None = None) -> None:
        self.status[kind][status] += 1
        if seconds is not None:
            self.latency[kind].append(seconds)


def body(i: int, stream: bool = False, max_tokens: int = 16) -> dict:
    q = QUESTIONS[i % len(QUESTIONS)]
    return {
        "messages": [{"role": "user", "content": q}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


async def backoff(status: int, headers) -> None:
    """What a well-behaved client does on 429: wait Retry-After seconds."""
    if status == 429:
        await asyncio.sleep(float(headers.get("retry-after", 1)))


async def plain(url, c, t: Tally, stop, k):
    i = k
    while time.monotonic() < stop:
        start = time.monotonic()
        try:
            r = await c.post(f"{url}/v1/chat/completions", json=body(i))
            t.add(
                "plain", r.status_code, time.monotonic() - start if r.status_code == 200 else None
            )
            await backoff(r.status_code, r.headers)
        except Exception as e:  # noqa: BLE001 — no HTTP answer: counted as lost
            t.add("plain", f"lost {type(e).__name__}")
        i += 7


async def streaming(url, c, t: Tally, stop, k, disconnect: bool):
    kind = "disconnect" if disconnect else "stream"
    i = k
    while time.monotonic() < stop:
        start = time.monotonic()
        try:
            async with c.stream("POST", f"{url}/v1/chat/completions", json=body(i, True)) as r:
                chunks = 0
                async for _ in r.aiter_lines():
                    chunks += 1
                    if disconnect and chunks >= 2:
                        break  # leaving the block closes the connection mid-stream
                ok = r.status_code == 200 and not disconnect
                t.add(kind, r.status_code, time.monotonic() - start if ok else None)
            await backoff(r.status_code, r.headers)
        except Exception as e:  # noqa: BLE001
            t.add(kind, f"lost {type(e).__name__}")
        i += 5


async def bad(url, c, t: Tally, stop, limit: int):
    cases = [
        ("oversize", lambda: {"content": b'{"messages": "' + b"x" * (limit + 10) + b'"}'}),
        ("malformed", lambda: {"content": b'{"messages": [{"role": "user", "content": '}),
        ("malformed", lambda: {"json": {"messages": "not a list", "max_tokens": "many"}}),
        ("malformed", lambda: {"json": {"messages": [{"role": "user", "content": "hi"}],
                                         "max_tokens": 10**9}}),
    ]  # fmt: skip
    i = 0
    while time.monotonic() < stop:
        kind, make = cases[i % len(cases)]
        i += 1
        try:
            r = await c.post(f"{url}/v1/chat/completions", **make())
            t.add(kind, r.status_code)
        except Exception as e:  # noqa: BLE001
            t.add(kind, f"lost {type(e).__name__}")
        await asyncio.sleep(0.2)


async def slow_sender(port: int, t: Tally, stop, stall: float | None):
    """A raw HTTP request whose body arrives in pieces (stall: one pause that long)."""
    kind = "slow" if stall is None else "stalled"
    while time.monotonic() < stop:
        payload = json.dumps(body(3)).encode()
        start = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                + f"\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            )
            for k in range(0, len(payload), 16):
                writer.write(payload[k : k + 16])
                await writer.drain()
                if stall:  # one piece, then silence past the body timeout: expect 408
                    await asyncio.sleep(stall)
                    break
                await asyncio.sleep(0.05)
            line = await asyncio.wait_for(reader.readline(), 300)
            status = int(line.split()[1]) if line else "lost (closed)"
            ok = stall is None and status == 200
            t.add(kind, status, time.monotonic() - start if ok else None)
            writer.close()
            if status == 429:
                await asyncio.sleep(1)
        except Exception as e:  # noqa: BLE001
            t.add(kind, f"lost {type(e).__name__}")
        await asyncio.sleep(1)


async def watch_queue(url, c, stop, seen: dict):
    while time.monotonic() < stop:
        try:
            h = (await c.get(f"{url}/health")).json()
            seen["max"] = max(seen.get("max", 0), h["queued"])
            seen["limit"] = h["max_queue"]
        except Exception:  # noqa: BLE001, S110 — the server's answers are judged elsewhere
            pass
        await asyncio.sleep(0.25)


async def soak(url: str, port: int, duration: float, clients: int, limit: int) -> tuple:
    import httpx

    t, seen = Tally(), {}
    stop = time.monotonic() + duration
    limits = httpx.Limits(max_connections=4 * clients + 16)
    async with httpx.AsyncClient(timeout=600, limits=limits) as c:
        await asyncio.gather(
            *(plain(url, c, t, stop, k) for k in range(clients)),
            *(streaming(url, c, t, stop, k, False) for k in range(clients)),
            *(streaming(url, c, t, stop, k, True) for k in range(max(1, clients // 2))),
            bad(url, c, t, stop, limit),
            slow_sender(port, t, stop, None),
            slow_sender(port, t, stop, 8.0),
            watch_queue(url, c, stop, seen),
        )
    return t, seen


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))] if v else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of soak")
    p.add_argument("--clients", type=int, default=4, help="plain and streaming clients each")
    p.add_argument("--max-body-bytes", type=int, default=65536)
    p.add_argument("--max-queue", type=int, default=8, help="small, so that it fills")
    p.add_argument("--rss-margin", type=float, default=0.10, help="allowed relative RSS growth")
    a = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gentune = os.path.join(os.path.dirname(sys.executable), "gentune")
    cmd = [gentune, "serve", a.model, "--port", str(port), "--max-queue", str(a.max_queue),
           "--max-body-bytes", str(a.max_body_bytes), "--body-timeout", "5"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        asyncio.run(wait_ready(url, proc))
        asyncio.run(soak(url, port, 20, 2, a.max_body_bytes))  # warm-up: allocations settle
        rss0 = rss_mib(proc.pid)
        t, seen = asyncio.run(soak(url, port, a.duration, a.clients, a.max_body_bytes))
        rss1 = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"\n`gentune serve {a.model}` for {a.duration:.0f} s, {a.clients} plain + {a.clients} "
          f"streaming + {max(1, a.clients // 2)} disconnecting clients, bad bodies, slow senders"
          f" (max queue {a.max_queue}, body timeout 5 s)\n")  # fmt: skip
    print("| kind | requests | answers by status | p50 s | p99 s |")
    print("|---|---|---|---|---|")
    fivexx = lost = 0
    for kind, counts in sorted(t.status.items()):
        lat = t.latency.get(kind, [])
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=str))
        fivexx += sum(v for k, v in counts.items() if isinstance(k, int) and k >= 500)
        lost += sum(v for k, v in counts.items() if isinstance(k, str))
        p50, p99 = (f"{pct(lat, 0.5):.2f}", f"{pct(lat, 0.99):.2f}") if lat else ("–", "–")
        print(f"| {kind} | {sum(counts.values())} | {shown} | {p50} | {p99} |")
    growth = (rss1 - rss0) / rss0
    print(f"\nqueue: at most {seen.get('max')} waiting (limit {seen.get('limit')}); server RSS "
          f"{rss0:.0f} MiB after warm-up, {rss1:.0f} MiB at the end ({100 * growth:+.1f} %, "
          f"margin {100 * a.rss_margin:.0f} %); 5xx: {fivexx}; lost: {lost}")  # fmt: skip
    failed = fivexx or lost or seen.get("max", 0) > seen.get("limit", 0) or growth > a.rss_margin
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
