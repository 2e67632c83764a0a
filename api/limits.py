"""Request body size limit, as pure ASGI middleware (issue 17, findings 8 and 12).

* Every request body is bounded: ``QIAO_MAX_BODY_BYTES`` (default 1 MiB: the largest valid JSON
  body, a 20,000-character chat of CJK text, is ~60 KB) for every route, except the routes given
  their own limit (uploads: ``QIAO_MAX_UPLOAD_BYTES`` + multipart framing). A ``Content-Length``
  above the limit is answered before the app runs; a body without one (chunked) is counted as it
  streams in and cut off at the limit. Either way the answer is a short JSON 413 naming the
  setting (the OpenAI error shape under ``/v1``), never an echo of the input. Measured before: a
  3.5 MB JSON body stalled another client's ``/search`` for 10 s, an 11.9 MB one took 39 s.
* The 413 (and any other early answer: 401, 403, 415 ...) reaches clients that send the whole body
  before reading the response (Python ``urllib``/``requests``/``httpx``). When an app answers
  without reading the body, the server closes a socket with unread bytes in its receive
  buffer, the kernel then sends RST instead of FIN and the client, still writing, gets
  ``ConnectionResetError`` without seeing the answer (measured with a 21 MB upload). So before the
  response starts, the rest of the body is read and discarded: at most :data:`DRAIN_BYTES`
  (64 MiB, ~0.1 s on loopback) and :data:`DRAIN_SECONDS`; a body announced larger than that, or a
  client that waits for ``100 Continue`` (curl), gets the answer at once (curl reads it fine).
"""

from __future__ import annotations

import json

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DRAIN_BYTES = 64 * 1024 * 1024
DRAIN_SECONDS = 10.0


class _Body:
    """What the middleware knows about one request's body."""

    def __init__(self, done: bool):
        self.done = done  # the last body chunk (or a disconnect) was received
        self.received = 0
        self.too_large = False
        self.started = False  # a response start went out
        self.suppress = False  # the app's own response is being replaced by the 413


def error_body(path: str, status: int, message: str, code: str) -> bytes:
    """A short JSON error: FastAPI's ``{"detail"}`` shape, or OpenAI's under ``/v1``."""
    if path.startswith("/v1/"):
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    else:
        body = {"detail": message}
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


async def send_json(send: Send, status: int, body: bytes, close: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def drain(receive: Receive, state: _Body, announced: int | None = None) -> None:
    """Read and discard the rest of the request body (bounded by :data:`DRAIN_BYTES` and :data:`DRAIN_SECONDS`)."""
    if state.done or (announced is not None and announced > DRAIN_BYTES):
        return
    drained = 0
    with anyio.move_on_after(DRAIN_SECONDS):
        while not state.done and drained <= DRAIN_BYTES:
            msg = await receive()
            if msg["type"] != "http.request":
                state.done = True  # http.disconnect: the client is gone
                break
            drained += len(msg.get("body", b""))
            state.done = not msg.get("more_body", False)


def route_limits(settings) -> dict[tuple[str, str], tuple[int, str, int]]:
    """Routes with their own body limit: uploads (``QIAO_MAX_UPLOAD_BYTES`` plus the multipart framing)."""
    from qiao.api.routes_admin import FRAMING_SLACK

    return {("POST", "/documents"): (settings.max_upload_bytes + FRAMING_SLACK, "QIAO_MAX_UPLOAD_BYTES", settings.max_upload_bytes)}


class BodyLimitMiddleware:
    """413 for request bodies over a limit, and a drained body before any early answer (see the module doc)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, per_route: dict[tuple[str, str], tuple[int, str, int]] | None = None):
        """``per_route``: ``{(method, path): (limit, setting name, the setting's value)}`` (the limit may
        add framing slack to the setting, e.g. multipart headers around an upload)."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.per_route = per_route or {}

    def limit_for(self, scope: Scope) -> tuple[int, str, int]:
        """``(limit in bytes, the setting that sets it, its value)`` for this request."""
        default = (self.max_body_bytes, "QIAO_MAX_BODY_BYTES", self.max_body_bytes)
        return self.per_route.get((scope["method"], scope["path"]), default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit, setting, stated = self.limit_for(scope)
        cl = headers.get("content-length")
        announced = int(cl) if cl is not None and cl.isdigit() else None
        state = _Body(done=announced == 0 or (cl is None and "transfer-encoding" not in headers))
        waits_for_continue = headers.get("expect", "").lower() == "100-continue"
        path = scope["path"]

        async def answer_413() -> None:
            size = f"{announced} bytes" if announced is not None else f"more than {limit} bytes"
            what = "the upload" if setting == "QIAO_MAX_UPLOAD_BYTES" else "the request body"
            message = f"{what} is {size}; the limit is {stated} bytes ({stated / 1048576:.1f} MB; {setting})"
            if not waits_for_continue:
                await drain(receive, state, announced)
            await send_json(send, 413, error_body(path, 413, message, "request_too_large"), close=not state.done)
            state.started = True

        if announced is not None and announced > limit:
            await answer_413()
            return

        async def limited_receive() -> Message:
            msg = await receive()
            if msg["type"] == "http.request":
                state.received += len(msg.get("body", b""))
                state.done = not msg.get("more_body", False)
                if state.received > limit:
                    state.too_large = True
                    raise HTTPException(413, "request body too large")  # stops the app; answered below
            else:
                state.done = True
            return msg

        async def guarded_send(msg: Message) -> None:
            if state.suppress:
                return
            if msg["type"] == "http.response.start":
                if state.too_large:  # whatever the app made of the cut-off body, the answer is the 413
                    state.suppress = True
                    await answer_413()
                    return
                if not state.done and not waits_for_continue:
                    await drain(receive, state, announced)
                state.started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state.too_large or state.started:
                raise
        if state.too_large and not state.started:
            await answer_413()
