"""The one HTTP mapping of :class:`qiao.errors.QiaoError`: ``{"detail": message}`` with the
error's status (and ``Retry-After`` for transient ones), the shape FastAPI's ``HTTPException``
gives, so routes raise the service's errors and never translate them one by one.

(The OpenAI-compatible routes answer in their own ``{"error": {...}}`` shape and map the same
family through :func:`qiao.errors.openai_error_fields`.)
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from qiao.errors import QiaoError


def qiao_error_response(exc: QiaoError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return JSONResponse({"detail": exc.message}, status_code=exc.http_status, headers=headers)


async def _handle(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QiaoError)
    return qiao_error_response(exc)


def register_error_handlers(app: FastAPI) -> None:
    """Answer every :class:`QiaoError` a route lets through with its status and message."""
    app.add_exception_handler(QiaoError, _handle)
