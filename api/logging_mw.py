"""Structured request logs: one JSON line per HTTP request, and the request id in ``X-Request-ID``.

A line (logger ``qiao.requests``, to stdout, where uvicorn wrote its access log)::

    {"ts": "2026-11-29T11:40:02.113Z", "level": "info", "event": "request", "request_id": "6f1c…",
     "method": "POST", "route": "/search", "path": "/search", "status": 200, "took_ms": 12.4,
     "client": "127.0.0.1", "query": "…"}

* ``request_id``: the client's ``X-Request-ID`` when it is sane (1-128 characters of
  ``A-Z a-z 0-9 . _ : -``, so it cannot inject into logs or headers), otherwise a fresh uuid4 hex.
  It is sent back in the response's ``X-Request-ID`` header, and handlers find it in
  ``request.state.request_id``.
* ``route``: the route template (as in ``/metrics``); ``path``: the raw path (without query string).
* ``query``: the query / question text, only with ``QIAO_LOG_QUERIES=true`` (default false: what
  people search for can be personal). It is read from the JSON body of ``POST /search``, ``/ask``
  and ``/v1/chat/completions`` (last user message), cut to 500 characters.
* ``took_ms``: from arrival until the last body byte is sent. A 5xx is logged at level ``error``,
  a 4xx at ``warning``.

Plain ASGI middleware (streams pass through unbuffered); wired by :func:`install_request_logging`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import datetime, timezone

from qiao.api.metrics import route_of

LOGGER_NAME = "qiao.requests"
REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_QUERY_ROUTES = {"/search": "query", "/ask": "question", "/v1/chat/completions": None}
MAX_QUERY_LOG_CHARS = 500
MAX_BODY_PEEK = 256 * 1024  # bodies larger than this are not parsed for the query text


class JsonFormatter(logging.Formatter):
    """The record's ``fields`` dict (plus ts, level, and the message as ``event``) as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        line = {"ts": ts, "level": record.levelname.lower(), "event": record.getMessage()}
        line.update(getattr(record, "fields", {}))
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of the record (test runners swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def request_logger() -> logging.Logger:
    """``qiao.requests`` with a JSON handler on stdout (added once per process).

    stdout, like uvicorn's access log that these lines replace: the request log is the server's
    output stream, stderr stays for diagnostics. (A supervisor that pipes stderr and never reads it
    must not see the server stall once the pipe buffer fills with request lines.)"""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(getattr(h, "_qiao_json", False) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(JsonFormatter())
        handler._qiao_json = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def request_id_of(headers) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            rid = value.decode("latin-1").strip()
            if _SANE_ID.fullmatch(rid):
                return rid
            break
    return uuid.uuid4().hex


def query_text(path: str, body: bytes) -> str | None:
    """The query or question of a JSON body, for the log (None when there is none)."""
    if path not in _QUERY_ROUTES or not body or len(body) > MAX_BODY_PEEK:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    field = _QUERY_ROUTES[path]
    if field is not None:
        text = data.get(field)
    else:  # OpenAI chat: the last user message
        text = next(
            (m.get("content") for m in reversed(data.get("messages") or []) if isinstance(m, dict) and m.get("role") == "user"),
            None,
        )
    return text[:MAX_QUERY_LOG_CHARS] if isinstance(text, str) else None


class RequestLogMiddleware:
    def __init__(self, app, log_queries: bool = False):
        self.app = app
        self.log_queries = log_queries
        self.logger = request_logger()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = request_id_of(scope.get("headers") or ())
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["arrived"] = time.monotonic()  # the request time budget counts from here (api/budget.py)
        status = {"code": 500}
        body = bytearray()
        peek = self.log_queries and scope["method"] == "POST" and scope["path"] in _QUERY_ROUTES

        async def receive_wrapper():
            message = await receive()
            if peek and message["type"] == "http.request" and len(body) <= MAX_BODY_PEEK:
                body.extend(message.get("body", b""))
            return message

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive_wrapper if peek else receive, send_wrapper)
        finally:
            code = status["code"]
            fields = {
                "request_id": rid,
                "method": scope["method"],
                "route": route_of(scope),
                "path": scope["path"],
                "status": code,
                "took_ms": round((time.perf_counter() - t0) * 1000, 3),
                "client": (scope.get("client") or [None])[0],
            }
            if peek:
                q = query_text(scope["path"], bytes(body))
                if q is not None:
                    fields["query"] = q
            level = logging.ERROR if code >= 500 else logging.WARNING if code >= 400 else logging.INFO
            self.logger.log(level, "request", extra={"fields": fields})


def install_request_logging(app, settings) -> None:
    """Add the middleware (call it after the other middlewares: it must be outermost to time and
    tag everything)."""
    app.add_middleware(RequestLogMiddleware, log_queries=settings.log_queries)
