"""Per-request time budget, cancellation, and the embedding lane of the current work.

A request handler (``qiao.api.budget``) opens a :class:`Budget` (deadline ``QIAO_REQUEST_TIMEOUT_S``
from now) and cancels it when the client disconnects or the deadline passes; the embedding pool
(:mod:`qiao.index.pool`) reads it through a context variable, so every job a request queued is
dropped as soon as nobody waits for it. Context variables follow the work into the worker
thread (Starlette's ``run_in_threadpool`` copies the context), so no signature changes on the way.

Index builds run in the ``bulk`` lane (the pool's lowest priority); everything else is interactive.

Pure-Python steps between embeddings (query analysis, BM25, /ask sentence scoring) call
:func:`check_budget` between steps and every few hundred items, so a request whose client got its
503 stops holding the GIL within one step instead of running to the end for nobody (measured: a
2,000-character question is ~110 ms of Python on an idle core, seconds on a saturated one).
"""

from __future__ import annotations

import contextvars
import threading
import time
from contextlib import contextmanager

INTERACTIVE = "interactive"
BULK = "bulk"

_BUDGET: contextvars.ContextVar["Budget | None"] = contextvars.ContextVar("qiao_budget", default=None)
_LANE: contextvars.ContextVar[str] = contextvars.ContextVar("qiao_lane", default=INTERACTIVE)


class Budget:
    """A deadline and a cancel flag shared by a request and the work it started."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self._cancelled = threading.Event()
        self._reason = ""

    def cancel(self, reason: str) -> None:
        self._reason = reason
        self._cancelled.set()

    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def expired(self) -> bool:
        return self._cancelled.is_set() or (self.deadline is not None and time.monotonic() > self.deadline)

    def reason(self) -> str:
        if self._reason:
            return self._reason
        return f"the request ran out of its time budget ({self.seconds:g} s)"


class BudgetSpent(RuntimeError):
    """The current request's budget is spent (deadline passed, client gone, server stopping)."""


def check_budget() -> None:
    """Raise :class:`BudgetSpent` when the current work's budget is spent (a no-op without one)."""
    budget = _BUDGET.get()
    if budget is not None and budget.expired():
        raise BudgetSpent(budget.reason())


def current_budget() -> Budget | None:
    return _BUDGET.get()


def current_lane() -> str:
    return _LANE.get()


@contextmanager
def lane(name: str):
    """Run the block's embedding work in lane ``name`` (``BULK`` for index builds)."""
    token = _LANE.set(name)
    try:
        yield
    finally:
        _LANE.reset(token)


def set_budget(budget: Budget | None) -> contextvars.Token:
    return _BUDGET.set(budget)


def reset_budget(token: contextvars.Token) -> None:
    _BUDGET.reset(token)
