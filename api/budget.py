"""Run a request's CPU work off the event loop, within ``QIAO_REQUEST_TIMEOUT_S``, cancelled when the client leaves.

``await bounded(request, settings, fn, *args)`` runs ``fn`` in the thread pool with a
:class:`qiao.index.budget.Budget` in its context, and waits for the first of: the result, the
deadline, the client's ``http.disconnect``. On the deadline the answer is a 503 JSON error naming
the limit (with ``Retry-After``); on a disconnect nobody is left to answer. Either way the budget
is cancelled, so the embedding jobs the request queued are dropped before they reach an engine
(:mod:`qiao.index.pool`), and a thread blocked waiting for one returns within 50 ms; the Python
steps between embeddings (query analysis, BM25, /ask sentence scoring) check the budget between
steps (:func:`qiao.index.budget.check_budget`) and stop there.

The deadline counts from the request's arrival (stamped by the outermost middleware,
``api/logging_mw.py``), so time spent reading the body, parsing it and waiting for the heavy lane
(:mod:`qiao.api.admission`) is inside it. With ``lane`` (a heavy request), the work first waits for a
slot of the heavy lane (429 with ``Retry-After`` when none comes in time), and the slot is handed
back when the work really ends (not at the 503), with the CPU time the work's thread used.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Any, Callable

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from qiao.api.admission import ClientLeft, HeavyLane, LaneFull
from qiao.index.budget import Budget, BudgetSpent, set_budget


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


def timeout_error(seconds: float) -> HTTPException:
    return HTTPException(
        status_code=503,
        detail=f"the request took longer than its time budget of {seconds:g} s (QIAO_REQUEST_TIMEOUT_S) and was "
        "cancelled; the server is busy or the input is very long: try again, or send a shorter query",
        headers={"Retry-After": "2"},
    )


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body has been read by now)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def busy_error(exc: LaneFull) -> HTTPException:
    """429 Too Many Requests: the heavy lane is a rate limit on long queries (a share of the server's time),
    and ``Retry-After`` says when to come back; clients such as the openai SDK honour both and retry."""
    return HTTPException(status_code=429, detail=exc.message, headers={"Retry-After": str(exc.retry_after)})


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # a cancelled request's late error is expected: don't log it as unretrieved


def arrival(request: Request) -> float:
    """``time.monotonic()`` when the request arrived (the outermost middleware stamps it; else now)."""
    return request.scope.get("state", {}).get("arrived") or time.monotonic()


def _timed(cpu: list[float], ctx: contextvars.Context, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Run ``fn`` in ``ctx`` and put the CPU time this thread spent on it in ``cpu[0]``."""
    c0 = time.thread_time()
    try:
        return ctx.run(fn, *args, **kwargs)
    finally:
        cpu[0] = time.thread_time() - c0


async def bounded(request: Request, seconds: float, fn: Callable[..., Any], *args, lane: HeavyLane | None = None, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` in the thread pool within ``seconds`` of the request's arrival (see the module doc)."""
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        return await within(arrival(request) + seconds, seconds, fn, *args, lane=lane, gone=watch, **kwargs)
    finally:
        watch.cancel()


async def within(
    deadline: float, seconds: float, fn: Callable[..., Any], *args, lane: HeavyLane | None = None,
    gone: asyncio.Future | None = None, **kwargs,
) -> Any:
    """:func:`bounded` without an HTTP request: ``deadline`` (``time.monotonic()``) and, optionally, a future
    that completes when nobody waits for the answer any more (``gone``: then :class:`ClientGone`). The MCP
    tools (integrations/mcp_server.py) run through this, so they get the same budget and heavy lane."""
    budget = Budget(max(0.0, deadline - time.monotonic()))
    watch: asyncio.Future = gone if gone is not None else asyncio.get_running_loop().create_future()
    try:
        if lane is not None:
            try:
                await lane.acquire(deadline, watch)
            except LaneFull as exc:
                raise busy_error(exc) from None
            except ClientLeft:
                raise ClientGone from None
            except asyncio.TimeoutError:
                raise timeout_error(seconds) from None
        ctx = contextvars.copy_context()
        ctx.run(set_budget, budget)
        cpu = [0.0]
        started = time.monotonic()
        work = asyncio.ensure_future(run_in_threadpool(_timed, cpu, ctx, fn, *args, **kwargs))
        if lane is not None:  # the slot is free when the work really ends (a timed-out thread may still run)
            work.add_done_callback(lambda _f: lane.release(cpu[0], time.monotonic() - started))
        try:
            done, _ = await asyncio.wait({work, watch}, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server is shutting down or the ASGI task was cancelled
            budget.cancel("the request was cancelled")
            work.add_done_callback(_consume)
            raise
    finally:
        if gone is None:
            watch.cancel()
    if work in done:
        try:
            return work.result()
        except BudgetSpent:
            raise timeout_error(seconds) from None
    work.add_done_callback(_consume)
    if watch in done:
        budget.cancel("the client disconnected")
        raise ClientGone
    budget.cancel(f"the request ran out of its time budget ({seconds:g} s)")
    raise timeout_error(seconds)


def client_gone_response() -> Response:
    """What a handler returns for a client that left: nobody reads it (499, as nginx logs it)."""
    return Response(status_code=499)


def tool_runner(app, settings):
    """How the MCP tools (integrations/mcp_server.py) run their work inside this app: like a route, within
    ``QIAO_REQUEST_TIMEOUT_S`` of the call and, for a long query, behind the app's heavy lane; the lane's
    429 and the budget's 503 become :class:`qiao.errors.Busy` (a tool error with the same message)."""
    from qiao.errors import Busy

    async def run(text: str, fn: Callable[..., Any], *args: Any) -> Any:
        lane: HeavyLane | None = getattr(app.state, "heavy_lane", None)
        seconds = settings.request_timeout_s
        try:
            return await within(time.monotonic() + seconds, seconds, fn, *args, lane=lane if lane is not None and lane.is_heavy(text) else None)
        except HTTPException as exc:
            retry = (exc.headers or {}).get("Retry-After")
            raise Busy(f"{exc.detail}" + (f" (retry after {retry} s)" if retry else "")) from None

    return run

