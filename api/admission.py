"""Admission control for expensive requests: the heavy lane.

Why (measured, tests/soak/test_soak.py::test_hostile_mix_soak and eval/BENCH.md): everything a
request does between embeddings is Python and holds the one GIL of the server process. A short
query costs ~1 ms of it; a 2,000-character query ~50 ms (glossary 19, dictionary bridge 19, jieba
13 ms), a 2,000-character question ~110 ms, 2,000 x U+FDFA (36,000 characters after NFKC) ~95 ms,
even with every embedding cached. Four clients sending such queries kept the GIL busy, and every
short request then waited for it at each step (CPython hands the GIL over at most every 5 ms
switch interval): normal /search p95 went from 19 to 138 ms. Niceness cannot help (the GIL is not
scheduled by the kernel), so the share of the process that long work gets is bounded here, before
it starts, instead.

A query, question or chat question is *heavy* when its NFKC form (what the analysers and the
embedder read: U+FDFA expands 18x) is longer than ``QIAO_HEAVY_QUERY_CHARS``. Heavy requests:

- run at most ``QIAO_HEAVY_CONCURRENCY`` at a time (default 1: one heavy thread in the process);
- take at most ``QIAO_HEAVY_SHARE`` of the time: after one ran for ``c`` seconds of its own thread's
  CPU time, the lane stays closed for ``c * (1 - share) / share`` (a duty cycle; 0.25 -> 3c);
- wait for the lane in the event loop (no thread, no CPU), at most ``QIAO_HEAVY_WAIT_S`` and
  never past the request's own deadline; a client that leaves stops waiting;
- past that, or when ``QIAO_HEAVY_QUEUE`` requests already wait, the answer is a 429 JSON error
  with ``Retry-After`` (the expected wait), saying to retry later or send a shorter text. 429, not
  a 5xx: the lane is a rate limit on expensive requests, the server itself is up (and clients such as
  the openai SDK retry a 429 after ``Retry-After``).

Short requests never enter the lane: they only see at most one heavy thread beside them, running
at most ``share`` of the time.
"""

from __future__ import annotations

import asyncio
import math
import time
import unicodedata
from collections import deque
from dataclasses import dataclass


def text_cost(text: str) -> int:
    """Characters the analysers and the embedder will read: the NFKC form's length (C speed, no Python loop)."""
    return len(unicodedata.normalize("NFKC", text))


class LaneFull(Exception):
    """No heavy slot within the wait: answered as a 429 with ``Retry-After``."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


@dataclass
class LaneStats:
    admitted: int = 0
    rejected: int = 0  # 429: queue full or waited too long
    abandoned: int = 0  # the client left (or the request ran out of time) while waiting
    cpu_seconds: float = 0.0  # thread CPU of the admitted requests' work


class HeavyLane:
    """The lane heavy requests go through (one per app, used from its event loop only)."""

    def __init__(self, max_chars: int, concurrency: int = 1, share: float = 0.25, wait_s: float = 5.0, max_waiting: int = 32):
        self.max_chars = max_chars
        self.concurrency = concurrency
        self.share = share
        self.wait_s = wait_s
        self.max_waiting = max_waiting
        self.running = 0
        self.open_at = 0.0  # time.monotonic() before which no heavy request starts (the duty cycle's pause)
        self._waiters: deque[asyncio.Future] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._recent: deque[float] = deque(maxlen=16)  # seconds each of the last heavy requests kept the lane
        self.stats = LaneStats()

    @classmethod
    def of(cls, settings) -> "HeavyLane":
        return cls(settings.heavy_query_chars, settings.heavy_concurrency, settings.heavy_share, settings.heavy_wait_s, settings.heavy_queue)

    def is_heavy(self, *texts: str) -> bool:
        return sum(text_cost(t) for t in texts if t) > self.max_chars

    # --- waiting ------------------------------------------------------------------------------

    def retry_after(self) -> int:
        """Seconds until a new heavy request could expect a slot: the queue ahead times the recent cost of one."""
        per = (sum(self._recent) / len(self._recent)) if self._recent else 1.0
        ahead = len(self._waiters) + self.running
        return max(1, math.ceil(ahead * per / max(1, self.concurrency)))

    def _full(self, why: str) -> LaneFull:
        self.stats.rejected += 1
        return LaneFull(
            f"the server is busy with long queries ({why}); retry after the Retry-After seconds, or send a shorter "
            f"text: up to {self.max_chars} characters is never queued (QIAO_HEAVY_QUERY_CHARS)",
            self.retry_after(),
        )

    def _wake(self) -> None:
        """Hand free slots to the waiters in order; while the duty cycle's pause lasts, come back when it ends."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiters and self.running < self.concurrency:
            now = time.monotonic()
            if now < self.open_at:
                self._timer = asyncio.get_running_loop().call_later(self.open_at - now, self._wake)
                return
            fut = self._waiters.popleft()
            if fut.done():  # gave up waiting
                continue
            self.running += 1
            fut.set_result(None)

    async def acquire(self, deadline: float, gone: asyncio.Future | None = None) -> float:
        """Wait for a slot until ``deadline`` (``time.monotonic()`` time; the lane's own wait limit applies
        too); returns the seconds waited. Raises :class:`LaneFull`, or ``asyncio.TimeoutError`` when the
        request's own deadline came first, or :class:`ClientLeft` when ``gone`` finished first."""
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        if self.running < self.concurrency and not self._waiters and t0 >= self.open_at:
            self.running += 1
            self.stats.admitted += 1
            return 0.0
        if len(self._waiters) >= self.max_waiting:
            raise self._full(f"{len(self._waiters)} long requests are already waiting")
        fut: asyncio.Future = loop.create_future()
        self._waiters.append(fut)
        self._wake()
        limit = min(self.wait_s, deadline - t0)
        waits = {fut} if gone is None else {fut, gone}
        try:
            done, _ = await asyncio.wait(waits, timeout=max(0.0, limit), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._give_up(fut)
            raise
        if fut in done:
            self.stats.admitted += 1
            return time.monotonic() - t0
        self._give_up(fut)
        if gone is not None and gone in done:
            self.stats.abandoned += 1
            raise ClientLeft
        if deadline - t0 <= self.wait_s:  # the request's own deadline, not the lane's wait limit
            self.stats.abandoned += 1
            raise asyncio.TimeoutError
        raise self._full(f"no slot for a long request within {self.wait_s:g} s (QIAO_HEAVY_WAIT_S)")

    def _give_up(self, fut: asyncio.Future) -> None:
        if fut.done() and not fut.cancelled():  # granted just as we stopped waiting: hand the slot back
            self.release(0.0, 0.0)
        else:
            fut.cancel()
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass

    def release(self, cpu_seconds: float, held_seconds: float) -> None:
        """The admitted request's work ended after ``cpu_seconds`` of its thread's CPU time."""
        self.running -= 1
        self.stats.cpu_seconds += cpu_seconds
        pause = cpu_seconds * (1.0 - self.share) / self.share if self.share < 1.0 else 0.0
        self.open_at = max(self.open_at, time.monotonic() + pause)
        self._recent.append(held_seconds + pause)
        self._wake()


class ClientLeft(Exception):
    """The client disconnected while its request waited for the heavy lane."""
