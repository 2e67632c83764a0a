"""Typed request and response models of the HTTP API (also reused by the CLI's --json)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qiao.service.requests import SearchFilters

__all__ = ["SearchFilters"]  # re-exported: the request models below and the CLI use it from here


def too_long(text: str, what: str, limit: int) -> str | None:
    """The message for ``text`` longer than ``limit`` characters (``QIAO_MAX_QUERY_CHARS``), else None.

    The limit is a setting, so it is checked where the settings are known (the routes, the CLI),
    not in the models: a constant here would override ``QIAO_MAX_QUERY_CHARS``.
    """
    if len(text) <= limit:
        return None
    return f"{what} is {len(text)} characters; the limit is {limit} (QIAO_MAX_QUERY_CHARS): shorten it"


def _check_text(v: str, what: str) -> str:
    if not v.strip():
        raise ValueError(f"{what} must not be empty or only whitespace")
    if "\x00" in v:
        raise ValueError(f"{what} must not contain NUL characters")
    return v


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., description="English or Chinese (Simplified or Traditional); at most QIAO_MAX_QUERY_CHARS (2,000) characters", examples=["哪些地区支持干细胞临床研究"])
    k: int = Field(10, ge=1, le=100, strict=True, description="number of hits, 1..100")  # strict: true is not 1
    mode: Literal["hybrid", "bm25", "vector"] = "hybrid"
    filters: SearchFilters = Field(default_factory=SearchFilters)

    @field_validator("query")
    @classmethod
    def _query(cls, v: str) -> str:
        return _check_text(v, "query")


# The /ask request, shared by the route and `qiao ask` (one validation for both).
class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(
        ..., description="English or Chinese (Simplified or Traditional); at most QIAO_MAX_QUERY_CHARS (2,000) characters", examples=["which regions allow stem cell clinical trials"]
    )
    k: int = Field(8, ge=1, le=100, strict=True, description="evidence chunks to answer from, 1..100")
    filters: SearchFilters = Field(default_factory=SearchFilters)

    @field_validator("question")
    @classmethod
    def _question(cls, v: str) -> str:
        return _check_text(v, "question")


class HitScores(BaseModel):
    bm25: float | None
    vector: float | None


class HitRanks(BaseModel):
    bm25: int | None
    vector: int | None


class HitOut(BaseModel):
    rank: int
    chunk_id: str
    doc_id: str
    source: str
    title: str
    text: str
    lang: str
    start: int
    end: int
    score: float
    scores: HitScores
    ranks: HitRanks
    date: str | None
    regions: list[str]
    heading: str | None = None


class SearchResponse(BaseModel):
    query: str
    mode: str
    took_ms: float
    hits: list[HitOut]


class HealthResponse(BaseModel):
    status: Literal["ok", "no_index"]
    index_loaded: bool
    chunks: int
    documents: int
    embedder: str
    build_id: str | None = None
    detail: str | None = None


class DocumentMeta(BaseModel):
    doc_id: str
    source: str
    title: str
    lang: str
    date: str | None
    news_source: str | None
    chars: int
    chunks: int


class DocumentList(BaseModel):
    documents: list[DocumentMeta]


class DocumentSpan(BaseModel):
    start: int
    end: int
    text: str
    line_start: int = Field(description="1-based line of the span's first character")
    line_end: int = Field(description="1-based line of the span's last character")


class DocumentOut(DocumentMeta):
    text: str
    span: DocumentSpan | None = None


# --- error responses (documented in the OpenAPI schema, so clients and fuzzers know them) -----------


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="where the problem is, e.g. ['body', 'query']")
    msg: str = Field(description="what is wrong and how to fix it")
    type: str


class ErrorOut(BaseModel):
    """Every 4xx / 503 answer: ``detail`` says what went wrong and what to do about it."""

    detail: str | list[ValidationIssue]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorOut(BaseModel):
    """Errors of the OpenAI-compatible endpoints, in OpenAI's shape."""

    error: OpenAIErrorBody


_ERROR_TEXT = {
    400: "malformed request (the message says what to send)",
    401: "an API key is required (Authorization: Bearer <key>)",
    403: "the API key is not valid",
    404: "unknown document, doc_id in filters, or model",
    409: "conflicts with the indexed documents (duplicate upload, or removing the last document)",
    413: "upload too large",
    415: "unsupported file or content type",
    422: "invalid input (the message names the field and the rule)",
    429: "busy with long queries: retry after the Retry-After seconds, or send a shorter text (QIAO_HEAVY_QUERY_CHARS)",
    500: "the index could not be rebuilt; the current index is unchanged",
    503: "no index is loaded (run `qiao index`), another update is in progress, or the request ran out of its time "
    "budget (QIAO_REQUEST_TIMEOUT_S); retry later",
}


def error_responses(*codes: int, model: type[BaseModel] = ErrorOut) -> dict:
    """``responses=`` for a route or router: each code documented with its error body model."""
    return {code: {"model": model, "description": _ERROR_TEXT.get(code, "error")} for code in codes}
