"""One error family for every layer: :class:`QiaoError` with a machine ``code``, an HTTP status
and a message that says what to fix.

Lower layers raise these (or their historic subclasses, e.g. ``IndexLoadError``,
``DocumentError``, ``UnknownDocumentError``, which stay importable where they were); each front
end maps the family once:

* HTTP: one exception handler, :mod:`qiao.api.errors` (``{"detail": message}`` + the status);
* CLI: ``qiao: error: <message>`` on stderr and :attr:`QiaoError.exit_code` (:mod:`qiao.api.cli`);
* OpenAI-compatible endpoint: :func:`openai_error_fields` -> the ``error`` object;
* MCP (JSON-RPC): :func:`mcp_error`.

Importable from every layer (it imports nothing of Qiao).
"""

from __future__ import annotations

from typing import Any, ClassVar


class QiaoError(Exception):
    """Base of every error Qiao reports to a user. ``str(exc)`` is the message."""

    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 2
    """CLI exit status: 2 for every reported error (1 is left to unexpected failures)."""
    retry_after: ClassVar[int | None] = None
    """Seconds a client should wait before retrying (sent as ``Retry-After``), for transient errors."""

    @property
    def message(self) -> str:
        return str(self)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "http_status": self.http_status, "message": self.message}


class Invalid(QiaoError, ValueError):
    """The request or input is malformed (the message names the field and the fix)."""

    code = "invalid"
    http_status = 422


class NotFound(QiaoError, LookupError):
    code = "not_found"
    http_status = 404


class UnknownDocument(NotFound, KeyError):
    """No indexed document has this doc_id. ``doc_id`` holds it; ``args[0]`` too (KeyError style)."""

    code = "unknown_document"

    def __init__(self, doc_id: str, in_filters: bool = False):
        self.doc_id = doc_id
        self.in_filters = in_filters
        super().__init__(doc_id)

    def __str__(self) -> str:  # KeyError would quote the whole message
        where = " in filters" if self.in_filters else ""
        return f"unknown doc_id {self.doc_id!r}{where}: list documents with GET /documents or `qiao search --json`"


class Duplicate(QiaoError):
    code = "duplicate"
    http_status = 409


class LastDocument(QiaoError, ValueError):
    """Removing this document would leave the index empty."""

    code = "last_document"
    http_status = 409


class TooLarge(QiaoError):
    code = "too_large"
    http_status = 413


class Unsupported(QiaoError):
    code = "unsupported_media_type"
    http_status = 415


class Busy(QiaoError, RuntimeError):
    """Another writer holds the index or the document store; try again."""

    code = "busy"
    http_status = 503
    retry_after = 5


class NoIndex(QiaoError, RuntimeError):
    """No index is loaded, or it cannot be (missing, corrupt, built with other settings)."""

    code = "no_index"
    http_status = 503


class Unavailable(QiaoError, RuntimeError):
    """A component cannot run (missing package, unknown model)."""

    code = "unavailable"
    http_status = 503


class UpdateFailed(QiaoError, RuntimeError):
    """Rebuilding the index failed; the current index and documents are unchanged."""

    code = "update_failed"
    http_status = 500


def check_doc_ids(known, doc_ids, in_filters: bool = True) -> None:
    """Raise :class:`UnknownDocument` for the first of ``doc_ids`` not in ``known`` (a mapping or
    set of doc_ids, e.g. ``index.documents``). The one document-id check of every front end."""
    for d in doc_ids or ():
        if d not in known:
            raise UnknownDocument(d, in_filters=in_filters)


# --- mappings for front ends that are not HTTP handlers -----------------------------------------

def openai_error_fields(exc: QiaoError) -> dict[str, Any]:
    """``{"message", "type", "code", "status"}`` of the OpenAI ``error`` object for ``exc``."""
    return {
        "message": exc.message,
        "type": "server_error" if exc.http_status >= 500 else "invalid_request_error",
        "code": exc.code,
        "status": exc.http_status,
    }


# JSON-RPC 2.0 codes (MCP speaks JSON-RPC): invalid params for the caller's mistakes, a
# server-defined code (-32000..-32099) for "try again" states, internal error otherwise.
JSONRPC_INVALID_PARAMS = -32602
JSONRPC_INTERNAL_ERROR = -32603
JSONRPC_SERVER_UNAVAILABLE = -32001


def mcp_error(exc: QiaoError) -> dict[str, Any]:
    """The JSON-RPC ``error`` member an MCP server returns for ``exc``: ``{"code", "message", "data"}``
    (``data`` carries Qiao's code and HTTP status)."""
    if exc.http_status == 503:
        rpc = JSONRPC_SERVER_UNAVAILABLE
    elif 400 <= exc.http_status < 500:
        rpc = JSONRPC_INVALID_PARAMS
    else:
        rpc = JSONRPC_INTERNAL_ERROR
    return {"code": rpc, "message": exc.message, "data": {"code": exc.code, "http_status": exc.http_status}}
