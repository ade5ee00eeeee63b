"""The server's queue: requests wait here briefly and run one batch at a time on one thread.

One generation runs at a time (on a CPU, one batch already uses every core; on a GPU, batching
is what pays). Greedy requests with the same decoding settings that wait together are joined
into one `generate()` batch — the same function, and so the same output, as the rest of gentune
(greedy output does not depend on the batch). Sampled and streamed requests run alone, so a
seed gives the same text whatever else the server is doing.

The queue is bounded: a request that finds it full is refused at once (`Busy`, HTTP 429). Each
request has a deadline covering its wait and its generation; past it the request ends with
`TimedOut` (HTTP 504) and its generation stops after the current token. A client that goes away
stops its generation the same way. An error in one batch fails that batch's requests only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gentune.config import Decoding
from gentune.inference.generate import Generation, generate, stream

log = logging.getLogger("gentune.serve")


class Busy(RuntimeError):
    """The queue is full."""


class TimedOut(RuntimeError):
    """The request's deadline passed (waiting or generating)."""


class GenerationFailed(RuntimeError):
    """The generation raised; the traceback is logged, the server goes on."""

    @classmethod
    def wrap(cls, e: BaseException) -> GenerationFailed:
        log.error("generation failed", exc_info=e)
        return cls(f"generation failed: {type(e).__name__}: {e}")


@dataclass(eq=False)
class Job:
    prompts: list[list[int]]
    decoding: Decoding
    deadline: float  # time.monotonic() by which the request must be answered
    streaming: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _sink: asyncio.Queue | None = None  # results (and stream pieces) for the waiting request

    def over(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline

    def _put(self, item) -> None:
        assert self._loop is not None and self._sink is not None, "put before submitted"
        try:
            self._loop.call_soon_threadsafe(self._sink.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass


_END = object()


class Scheduler:
    def __init__(self, model, tokenizer, *, max_batch: int = 8, max_queue: int = 64):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self._pending: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.counts = {
            "served": 0,
            "refused_busy": 0,
            "timed_out": 0,
            "failed": 0,
            "cancelled": 0,
            "running": 0,
        }
        self._thread = threading.Thread(target=self._work, name="gentune-generate", daemon=True)
        self._thread.start()

    # ---- the request side (event loop) ----------------------------------------------------
    def stats(self) -> dict:
        with self._cv:
            return {
                **self.counts,
                "queued": len(self._pending),
                "max_queue": self.max_queue,
                "max_batch": self.max_batch,
            }

    def _submit(self, job: Job) -> None:
        job._loop, job._sink = asyncio.get_running_loop(), asyncio.Queue()
        with self._cv:
            if self._closed:
                raise Busy("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                self.counts["refused_busy"] += 1
                raise Busy(
                    f"server busy: {len(self._pending)} requests already waiting "
                    f"(gentune serve --max-queue {self.max_queue}); retry shortly"
                )
            self._pending.append(job)
            self._cv.notify()

    def _withdraw(self, job: Job) -> None:
        job.cancelled.set()
        with self._cv:
            if job in self._pending:
                self._pending.remove(job)

    async def _next(self, job: Job):
        left = job.deadline - time.monotonic()
        assert job._sink is not None, "waited on before submitted"
        try:
            item = await asyncio.wait_for(job._sink.get(), timeout=max(left, 0) + 0.25)
        except TimeoutError:
            self._withdraw(job)
            self._count("timed_out")
            raise TimedOut("no answer within the request timeout") from None
        if isinstance(item, BaseException):
            raise item
        return item

    async def complete(self, job: Job) -> list[Generation]:
        """Queue `job` and wait for its generations (len(prompts) × num_return_sequences)."""
        self._submit(job)
        try:
            return await self._next(job)
        finally:
            job.cancelled.set()  # a no-op when done; stops the work when the caller left

    def stream(self, job: Job) -> AsyncIterator[str | Generation]:
        """Queue a one-prompt job now (`Busy` at once when full); the returned iterator yields
        its text pieces, then the whole `Generation`."""
        job.streaming = True
        self._submit(job)

        async def pieces():
            try:
                while True:
                    item = await self._next(job)
                    if item is _END:
                        return
                    yield item
            finally:
                self._withdraw(job)

        return pieces()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            for job in self._pending:
                job._put(Busy("the server is shutting down"))
            self._pending.clear()
            self._cv.notify_all()

    # ---- the generation side (one thread) ------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._cv:
            self.counts[key] += n

    def _take(self) -> list[Job] | None:
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            job = self._pending.popleft()
            batch, size = [job], len(job.prompts)
            d = job.decoding
            if not job.streaming and not d.do_sample and d.num_beams == 1:
                for other in list(self._pending):
                    if size >= self.max_batch:
                        break
                    if (
                        not other.streaming
                        and other.decoding == d
                        and size + len(other.prompts) <= self.max_batch
                    ):
                        self._pending.remove(other)
                        batch.append(other)
                        size += len(other.prompts)
            self.counts["running"] = len(batch)
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            try:
                live = []
                for job in batch:
                    if job.over():
                        self._count("timed_out")
                        job._put(TimedOut("the request waited past its timeout"))
                    else:
                        live.append(job)
                if len(live) == 1 and live[0].streaming:
                    self._stream(live[0])
                elif live:
                    self._generate(live)
            finally:
                with self._cv:
                    self.counts["running"] = 0

    def _generate(self, jobs: list[Job]) -> None:
        prompts, owner = [], []
        for job in jobs:
            prompts += job.prompts
            owner += [job] * len(job.prompts)
        cut: set[int] = set()

        def should_stop(i: int) -> bool:
            if owner[i].over():
                cut.add(i)
                return True
            return False

        try:
            gens = generate(
                self.model,
                self.tokenizer,
                prompts,
                jobs[0].decoding,
                batch_size=self.max_batch,
                should_stop=should_stop,
            )
        except Exception as e:  # noqa: BLE001 — one batch's failure must not stop the server
            self._count("failed", len(jobs))
            for job in jobs:
                job._put(GenerationFailed.wrap(e))
            return
        n, at = jobs[0].decoding.num_return_sequences, 0
        for job in jobs:
            mine = range(at, at + len(job.prompts))
            at += len(job.prompts)
            if job.cancelled.is_set():
                self._count("cancelled")
                continue
            if any(i in cut for i in mine):
                self._count("timed_out")
                job._put(TimedOut("generation ran past the request timeout"))
                continue
            self._count("served")
            job._put(gens[mine.start * n : mine.stop * n])

    def _stream(self, job: Job) -> None:
        cut = []

        def should_stop() -> bool:
            if job.over():
                cut.append(True)
                return True
            return False

        pieces = stream(
            self.model, self.tokenizer, job.prompts[0], job.decoding, should_stop=should_stop
        )
        try:
            while True:
                try:
                    job._put(next(pieces))
                except StopIteration as stop:
                    final = stop.value
                    break
        except Exception as e:  # noqa: BLE001
            self._count("failed")
            job._put(GenerationFailed.wrap(e))
            return
        if job.cancelled.is_set():  # the client left; nobody is listening
            self._count("cancelled")
            return
        if cut:
            self._count("timed_out")
            job._put(TimedOut("generation ran past the request timeout"))
            return
        self._count("served")
        job._put(final)
        job._put(_END)
