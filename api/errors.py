"""Every error answer of the HTTP API: short JSON, no echo of large inputs, no file system paths.

- :class:`qiao.errors.QiaoError` (the service's error family) -> ``{"detail": message}`` with the
  error's status (and ``Retry-After`` for transient ones), the shape FastAPI's ``HTTPException``
  gives, so routes raise the service's errors and never translate them one by one. (The
  OpenAI-compatible routes answer in their own ``{"error": {...}}`` shape and map the same family
  through :func:`qiao.errors.openai_error_fields`.)

- ``RequestValidationError`` -> 422 ``{"detail": [{"loc", "msg", "type", "input"?}, ...]}`` with at most
  :data:`MAX_ISSUES` issues (then one ``too_many_errors`` issue counting the rest), each ``msg`` at most
  200 characters and each ``input`` excerpt at most :data:`MAX_INPUT_EXCERPT` characters; inputs that
  are not short scalars (objects, arrays, non-finite floats) are never echoed. FastAPI's default
  echoed the whole input: a 50 MB field came back as a 50 MB answer, and a NaN could not be
  serialised at all (a 500).
- ``HTTPException`` (incl. 404 / 405 of unknown routes) -> ``{"detail": ...}`` with paths redacted.
- anything else -> a short JSON 500 naming only the exception type (the traceback goes to the server
  log). This is the last resort: user input must be refused with a 4xx before it gets here.

Paths: the server's directories (data, corpus, checkout, home, temp, working directory) are replaced
by ``<data dir>``-style labels and any other absolute path under a system root by ``<path>``; the
CLI keeps full paths (the operator's own machine).
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qiao.errors import QiaoError

log = logging.getLogger("qiao.api")

MAX_ISSUES = 10
MAX_MSG = 200
MAX_INPUT_EXCERPT = 100
MAX_LOC_PARTS = 8
NOSNIFF = ("X-Content-Type-Options", "nosniff")

_ROOTS: dict[str, str] = {}  # absolute directory -> label, longest first when used
_ABS_PATH_RE = re.compile(
    r"(?<![\w.:/])(?:/(?:home|root|tmp|var|usr|opt|srv|mnt|media|work|etc|Users|private|run|data|proc|snap|nix|app|workspace)"
    r"(?:/[^\s'\"`:;,()<>\[\]{}]*)?|[A-Za-z]:\\[^\s'\"`:;,()<>\[\]{}]*)"
)


def register_roots(labelled: Iterable[tuple[Path | str | None, str]]) -> None:
    """Directories to show as labels in HTTP answers (e.g. ``(settings.data_dir, "<data dir>")``)."""
    for path, label in labelled:
        if path:
            for p in {str(path), os.path.realpath(path)}:
                if len(p) > 1:
                    _ROOTS[p.rstrip("/")] = label


def _default_roots() -> None:
    from qiao.settings import PROJECT_ROOT

    register_roots([
        (PROJECT_ROOT, "<qiao>"), (Path.home(), "~"), (tempfile.gettempdir(), "<tmp>"), (os.getcwd(), "<cwd>"),
        (sys.prefix, "<python>"),
    ])


def redact_paths(text: str) -> str:
    """``text`` with every absolute file system path replaced by a label (linear: literal replaces and one
    regex without nested repetition)."""
    if not _ROOTS:
        _default_roots()
    for root in sorted(_ROOTS, key=len, reverse=True):
        if root in text:
            text = text.replace(root, _ROOTS[root])
    return _ABS_PATH_RE.sub("<path>", text)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _excerpt(value: Any) -> Any:
    """A short, JSON-safe excerpt of a rejected input, or None when it should not be echoed."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        s = str(value) if value.bit_length() < 200 else None
        return value if s is not None and len(s) <= MAX_INPUT_EXCERPT else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[: MAX_INPUT_EXCERPT * 4]).decode("utf-8", "replace")
    if isinstance(value, str):
        return _short(value.encode("utf-8", "replace").decode("utf-8"), MAX_INPUT_EXCERPT)
    return None


def short_validation_issues(errors: list[dict]) -> list[dict]:
    """At most ``MAX_ISSUES`` issues, each small; a last one says how many more there were."""
    out = []
    for e in errors[:MAX_ISSUES]:
        loc = [p if isinstance(p, int) else _short(str(p), 60) for p in list(e.get("loc", ()))[:MAX_LOC_PARTS]]
        issue = {"loc": loc, "msg": _short(redact_paths(str(e.get("msg", ""))), MAX_MSG), "type": _short(str(e.get("type", "")), 60)}
        excerpt = _excerpt(e.get("input"))
        if excerpt is not None:
            issue["input"] = excerpt
        out.append(issue)
    if len(errors) > MAX_ISSUES:
        out.append({
            "loc": ["body"], "type": "too_many_errors",
            "msg": f"{len(errors) - MAX_ISSUES} more problems not listed; fix the ones above and send again",
        })
    return out


def json_error(status: int, detail: Any, headers: dict | None = None) -> JSONResponse:
    response = JSONResponse({"detail": detail}, status_code=status, headers=headers)
    response.headers.setdefault(*NOSNIFF)
    return response


def qiao_error_response(exc: QiaoError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return json_error(exc.http_status, _short(redact_paths(exc.message), 2000), headers)


async def _handle(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QiaoError)
    return qiao_error_response(exc)


def register_error_handlers(app: FastAPI) -> None:
    """Answer every :class:`QiaoError` a route lets through with its status and message."""
    app.add_exception_handler(QiaoError, _handle)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return json_error(422, short_validation_issues(list(exc.errors())))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail
    if isinstance(detail, str):
        detail = _short(redact_paths(detail), 2000)
    elif isinstance(detail, list):
        detail = short_validation_issues([d if isinstance(d, dict) else {"msg": str(d)} for d in detail])
    else:
        detail = _short(redact_paths(str(detail)), 2000)
    if exc.status_code in (204, 304):  # no body allowed
        return JSONResponse(None, status_code=exc.status_code, headers=getattr(exc, "headers", None))
    return json_error(exc.status_code, detail, getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    return json_error(500, f"internal error ({type(exc).__name__}); the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
