"""Two small ASGI middlewares: a strict JSON gate before any route parses a body, and ``nosniff``.

JSON gate. Python's ``json`` accepts what JSON does not and what Qiao cannot handle, and the
failures surfaced as 500s: ``NaN`` / ``Infinity`` / ``1e400`` (-> float inf) broke the error reply
that echoed them; a body nested 100,000 arrays deep raised ``RecursionError``; ``"\\ud800"`` decoded
to a lone surrogate that later failed UTF-8 encoding (``UnicodeEncodeError``); 1M unknown keys made
pydantic build 1M errors (39 s). Every request body that is not a form upload is checked here, once,
before FastAPI or a route sees it, and refused with 422 and a one-line reason:

- valid UTF-8 (strict);
- nesting depth <= :data:`MAX_DEPTH` (measured without recursion: escaped characters removed, the
  string contents dropped by splitting on quotes, then the running sum of ``[{`` = +1 / ``]}`` = -1
  over what is left, in numpy: linear time, no recursion);
- numbers finite (``NaN``, ``Infinity``, overflowing floats refused; huge integers too), at most
  :data:`MAX_KEYS` members per object;
- no lone UTF-16 surrogate in any string or key (only checked when the body holds a ``\\uD8xx``-
  ``\\uDFxx`` escape).

A body that is not JSON at all passes through: the route answers it in its own shape. The
answer uses the OpenAI error shape on ``/v1/`` paths and ``{"detail": ...}`` elsewhere.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_DEPTH = 32
MAX_KEYS = 1000
DEFAULT_MAX_BODY = 4 * 1024 * 1024
_SURROGATE_ESCAPE_RE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_STRUCT = bytes(range(256)).translate(None, b"[]{}")  # every byte except brackets (deleted below)


class BodyRejected(ValueError):
    """The body is JSON Qiao will not process; ``param`` is where (e.g. ``k`` or ``messages[0].content``)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def json_depth(body: bytes) -> int:
    """Maximum nesting depth of the JSON text ``body`` (brackets inside strings do not count)."""
    outside = b"".join(body.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
    brackets = outside.translate(None, _STRUCT)
    if not brackets:
        return 0
    steps = np.frombuffer(brackets, dtype=np.uint8)
    signed = np.where((steps == ord("[")) | (steps == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(signed).max())


def _where(path: list) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyRejected(f"the number {text[:40]} is too large: numbers must be finite")
    return value


def _reject_constant(name: str):
    raise BodyRejected(f"{name} is not a valid JSON number: send a finite number")


def _pairs(pairs: list) -> dict:
    if len(pairs) > MAX_KEYS:
        raise BodyRejected(f"an object has {len(pairs)} members; the limit is {MAX_KEYS}: remove the unknown fields")
    return dict(pairs)


def _find_surrogate(value, path: list) -> str | None:
    stack = [(value, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                return f"{_where(p)} contains a lone UTF-16 surrogate (\\u{ord(v[e.start]):04x}): send valid Unicode text"
        elif isinstance(v, dict):
            for k, item in v.items():
                if isinstance(k, str) and _find_surrogate(k, p) is not None:
                    return f"a key in {_where(p)} contains a lone UTF-16 surrogate: send valid Unicode text"
                stack.append((item, [*p, k]))
        elif isinstance(v, list):
            stack.extend((item, [*p, i]) for i, item in enumerate(v))
    return None


def check_json_body(body: bytes) -> None:
    """Raise :class:`BodyRejected` for a body Qiao will not parse (see the module docstring); return
    quietly for acceptable JSON and for text that is not JSON at all (the route reports that)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BodyRejected(f"the body is not valid UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start}): send UTF-8 JSON") from None
    depth = json_depth(body)
    if depth > MAX_DEPTH:
        raise BodyRejected(f"the JSON is nested {depth} levels deep; the limit is {MAX_DEPTH}")
    try:
        value = json.loads(body, parse_float=_finite_float, parse_constant=_reject_constant, object_pairs_hook=_pairs)
    except BodyRejected:
        raise
    except RecursionError:  # cannot happen below MAX_DEPTH; kept as a guard for a changed limit
        raise BodyRejected(f"the JSON is nested too deeply; the limit is {MAX_DEPTH}") from None
    except ValueError as e:
        if "integer string conversion" in str(e) or "Exceeds the limit" in str(e):
            raise BodyRejected("a number in the body has too many digits: send a number of ordinary size") from None
        return  # not JSON: the route says so in its own words
    if _SURROGATE_ESCAPE_RE.search(body):
        problem = _find_surrogate(value, [])
        if problem:
            raise BodyRejected(problem)


class JSONGateMiddleware:
    """Buffers a non-form request body, checks it with :func:`check_json_body`, then replays it to the app
    unchanged. Bodies over ``max_body`` (QIAO_MAX_BODY_BYTES) are passed on unchecked: the body-limit
    middleware outside refuses them except on routes with their own limit (uploads), which parse no JSON."""

    def __init__(self, app: ASGIApp, max_body: int = DEFAULT_MAX_BODY):
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").decode("latin-1").lower()
        if ctype.startswith(_FORM_TYPES):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body:
                # larger than any JSON body may be: only a route with its own larger limit (uploads, checked
                # by the body-limit middleware outside) gets here, and it does not parse JSON; pass it on
                await self.app(scope, _replay(chunks, receive, more_after=more), send)
                return
        body = b"".join(chunks)
        if body:
            try:
                check_json_body(body)
            except BodyRejected as exc:
                await _reject(scope, send, 422, str(exc))
                return
        await self.app(scope, _replay([body], receive, more_after=False), send)


def _replay(chunks: list[bytes], receive: Receive, more_after: bool) -> Receive:
    """A ``receive`` that hands out the already-read ``chunks`` first, then the rest of the stream."""
    pending = list(chunks)

    async def replay() -> Message:
        if pending:
            body = pending.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(pending) or more_after}
        return await receive()

    return replay


async def _reject(scope: Scope, send: Send, status: int, message: str) -> None:
    if scope.get("path", "").startswith("/v1/"):
        code = "invalid_json" if status == 422 else "request_too_large"
        payload = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    else:
        payload = {"detail": message}
    data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                    (b"x-content-type-options", b"nosniff")],
    })
    await send({"type": "http.response.body", "body": data})


class NoSniffMiddleware:
    """``X-Content-Type-Options: nosniff`` on every response (JSON, errors, static files, streams)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                if not any(k.lower() == b"x-content-type-options" for k, _ in headers):
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)
