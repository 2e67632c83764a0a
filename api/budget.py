"""Run a request's CPU work off the event loop, within ``QIAO_REQUEST_TIMEOUT_S``, cancelled when the client leaves.

``await bounded(request, settings, fn, *args)`` runs ``fn`` in the thread pool with a
:class:`qiao.index.budget.Budget` in its context, and waits for the first of: the result, the
deadline, the client's ``http.disconnect``. On the deadline the answer is a 503 JSON error naming
the limit (with ``Retry-After``); on a disconnect nobody is left to answer. Either way the budget
is cancelled, so the embedding jobs the request queued are dropped before they reach an engine
(:mod:`qiao.index.pool`), and a thread blocked waiting for one returns within 50 ms. Retrieval
steps between embeddings (BM25, FAISS, fusion) are not interruptible; they take milliseconds.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Callable

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from qiao.index.budget import Budget, set_budget
from qiao.index.pool import EmbeddingCancelled


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


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # a cancelled request's late error is expected: don't log it as unretrieved


async def bounded(request: Request, seconds: float, fn: Callable[..., Any], *args, **kwargs) -> Any:
    budget = Budget(seconds)
    ctx = contextvars.copy_context()
    ctx.run(set_budget, budget)
    work = asyncio.ensure_future(run_in_threadpool(ctx.run, fn, *args, **kwargs))
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, watch}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server is shutting down or the ASGI task was cancelled
        budget.cancel("the request was cancelled")
        work.add_done_callback(_consume)
        raise
    finally:
        watch.cancel()
    if work in done:
        try:
            return work.result()
        except EmbeddingCancelled:
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
