"""Load test of `gentune serve`: N concurrent clients for a bounded time against a local server.

Starts `gentune serve MODEL` on a free loopback port (a separate process, as users run it),
once per --max-batch value (side by side: 1 = no batching of concurrent requests), then for
each client count runs that many clients, each sending chat requests back to back for
--duration seconds. When the time is up no new request is sent, and every request already
sent is waited for: "lost" counts requests that never got an HTTP answer. Prints one row per
client count: requests/s, p50/p95 latency, generated tokens/s, and errors by kind.

    .venv/bin/python bench/serve_load.py [--model smollm2-135m|RUN] [--clients 1,8,32]
                                         [--max-batch 1,8] [--duration 30] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections import Counter

QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for a good night's sleep.",
    "Explain what a language model is in one sentence.",
    "Write a haiku about autumn leaves.",
    "How do I boil an egg?",
    "What is the difference between weather and climate?",
    "Name two planets of the solar system.",
    "Why is the sky blue?",
    "Suggest a name for a small bakery.",
    "What does a compiler do?",
    "Translate 'good morning' into German.",
    "Tell me a fun fact about octopuses.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(url: str, proc: subprocess.Popen, limit: float = 600) -> None:
    import httpx

    end = time.monotonic() + limit
    async with httpx.AsyncClient() as c:
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with code {proc.returncode}")
            try:
                if (await c.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise SystemExit("the server did not come up")


async def load(url: str, clients: int, duration: float, max_tokens: int) -> dict:
    import httpx

    latencies: list[float] = []
    outcomes: Counter = Counter()
    tokens = 0
    sent = 0
    stop_at = time.monotonic() + duration

    async def client(k: int, c: httpx.AsyncClient) -> None:
        nonlocal tokens, sent
        i = k
        while time.monotonic() < stop_at:
            body = {
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                "max_tokens": max_tokens,
            }
            i += clients
            sent += 1
            start = time.monotonic()
            try:
                r = await c.post(f"{url}/v1/chat/completions", json=body)
            except httpx.HTTPError as e:  # no HTTP answer at all: lost
                outcomes[f"lost ({type(e).__name__})"] += 1
                continue
            latencies.append(time.monotonic() - start)
            if r.status_code == 200:
                outcomes["ok"] += 1
                tokens += r.json()["usage"]["completion_tokens"]
            else:
                outcomes[f"HTTP {r.status_code}"] += 1

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    start = time.monotonic()
    async with httpx.AsyncClient(timeout=600, limits=limits) as c:
        await asyncio.gather(*(client(k, c) for k in range(clients)))
    wall = time.monotonic() - start
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    answered = sum(outcomes.values()) - sum(v for k, v in outcomes.items() if k.startswith("lost"))
    return {
        "clients": clients,
        "wall": wall,
        "sent": sent,
        "answered": answered,
        "ok": outcomes["ok"],
        "errors": {k: v for k, v in outcomes.items() if k != "ok"},
        "rps": outcomes["ok"] / wall,
        "p50": pct(0.50),
        "p95": pct(0.95),
        "tok_s": tokens / wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="model, run or exported directory")
    p.add_argument("--clients", default="1,8,32", help="client counts, comma-separated")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load per count")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-batch", default="1,8", help="server --max-batch values to compare")
    p.add_argument("--server-args", default="", help="extra flags for gentune serve")
    a = p.parse_args()

    rows = []
    for batch in (int(x) for x in a.max_batch.split(",")):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        gentune = os.path.join(os.path.dirname(sys.executable), "gentune")
        cmd = [
            gentune,
            "serve",
            a.model,
            "--port",
            str(port),
            "--max-batch",
            str(batch),
            *a.server_args.split(),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            asyncio.run(wait_ready(url, proc))
            asyncio.run(load(url, 2, 5, a.max_tokens))  # warm-up
            for n in (int(x) for x in a.clients.split(",")):
                rows.append({"batch": batch, **asyncio.run(load(url, n, a.duration, a.max_tokens))})
                print(f"  max-batch {batch}, {n} clients done", file=sys.stderr, flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    print(
        f"\ngentune serve {a.model} on loopback; chat requests, max_tokens={a.max_tokens}, "
        f"{a.duration:g} s of load per row {a.server_args}\n"
    )
    print(
        "| max batch | clients | sent | answered | ok | errors | lost | requests/s | p50 s "
        "| p95 s | generated tok/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lost = sum(v for k, v in r["errors"].items() if k.startswith("lost"))
        errors = {k: v for k, v in r["errors"].items() if not k.startswith("lost")}
        err = ", ".join(f"{k}: {v}" for k, v in errors.items()) or "0"
        print(
            f"| {r['batch']} | {r['clients']} | {r['sent']} | {r['answered']} | {r['ok']} "
            f"| {err} | {lost} | {r['rps']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} "
            f"| {r['tok_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
