"""OpenAI-compatible chat endpoint, so chat front ends can use Qiao as a "model".

* ``GET /v1/models``, ``GET /v1/models/{model}``: the one model, ``qiao``.
* ``POST /v1/chat/completions``: the last user message is answered by the ``/ask`` pipeline.
  Earlier turns are used only to resolve a short follow-up ("and in Beijing?", "那上海呢？") by
  carrying over the previous question's topic (:mod:`qiao.service.followup`); system prompts are
  ignored (Qiao answers from its documents, not from instructions). Limits: ``QIAO_MAX_CHAT_MESSAGES``
  messages and ``QIAO_MAX_CHAT_CHARS`` characters over all of them (413), the resolved question
  ``QIAO_MAX_QUERY_CHARS`` (422). Parsing, resolution and answering run in a worker thread, so a
  costly request never holds the event loop (``/health`` and other clients keep being answered); the
  answer runs like ``/ask``'s, within ``QIAO_REQUEST_TIMEOUT_S`` and, for a long question, through the
  heavy lane (api/admission.py; 429 with ``Retry-After`` when it is full). The reply keeps the answer's
  ``[n]`` markers and ends with a sources list (title, source file, date, quote); the structured
  citations are returned in the extra top-level field ``citations`` (on the final chunk when
  streaming), with ``answerable`` and ``question`` (the question actually asked).
  ``"stream": true`` gives server-sent events in the ``chat.completion.chunk`` format, ending
  with ``data: [DONE]``.
* Qiao extras in the body (``extra_body`` in the openai client): ``k`` (evidence passages) and
  ``filters`` (the facet filters of ``/search``).
* Every error of these routes has the OpenAI shape
  ``{"error": {"message", "type", "param", "code"}}``; the body is validated here, so FastAPI's
  own 422 shape never appears under ``/v1`` and the other routes keep theirs.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from qiao.api.budget import ClientGone, bounded, client_gone_response
from qiao.api.deps import get_service, heavy_lane
from qiao.api.errors import redact_paths
from qiao.api.schemas import SearchFilters
from qiao.corpus.lang import detect_lang
from qiao.errors import NoIndex, QiaoError, UnknownDocument, check_doc_ids, openai_error_fields
from qiao.index.budget import BudgetSpent
from qiao.service.core import QiaoService
from qiao.service.followup import resolve_question
from qiao.settings import Settings

MODEL_ID = "qiao"
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
DEFAULT_K = 8
MAX_K = 100
TITLE_CHARS = 90
_CREATED = int(time.time())

router = APIRouter(prefix="/v1", tags=["openai"])


# --- errors ------------------------------------------------------------------------------------


class OpenAIError(Exception):
    """An error answered in the OpenAI shape."""

    def __init__(
        self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
        type: str = "invalid_request_error", headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.type = message, status, param, code, type
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": redact_paths(self.message)[:2000], "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)

    @classmethod
    def of(cls, exc: QiaoError, param: str | None = None) -> "OpenAIError":
        """The OpenAI shape of one of the service's errors (the one mapping: qiao.errors.openai_error_fields)."""
        f = openai_error_fields(exc)
        return cls(f["message"], status=f["status"], param=param, code=f["code"], type=f["type"])


# --- request parsing -----------------------------------------------------------------------------


@dataclass
class ChatRequest:
    model: str
    messages: list[tuple[str, str]]  # (role, text)
    stream: bool
    k: int
    filters: SearchFilters


def _content_text(content: Any, role: str, i: int) -> str:
    """Text of one message's ``content``: a string or an array of ``{"type": "text", "text": ...}`` parts."""
    param = f"messages[{i}].content"
    if isinstance(content, str):
        return content
    if content is None and role in ("assistant", "tool", "function"):
        return ""  # e.g. an assistant turn that only carried tool calls
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise OpenAIError(
                    f"{param}[{j}] is a {kind!r} part: only text content is supported (a string or text parts)",
                    param=f"{param}[{j}]", code="unsupported_content",
                )
            texts.append(part["text"])
        return "\n".join(texts)
    got = "null" if content is None else type(content).__name__
    raise OpenAIError(f"{param} must be a string or an array of text parts, not {got}", param=param, code="invalid_type")


def parse_chat_request(body: Any, settings: Settings) -> ChatRequest:
    """Validate a ``/v1/chat/completions`` body; raises :class:`OpenAIError` with the offending ``param``.

    Bounds (before any text is looked at): at most ``QIAO_MAX_CHAT_MESSAGES`` messages and
    ``QIAO_MAX_CHAT_CHARS`` characters over all of them (413), the last user message at most
    ``QIAO_MAX_QUERY_CHARS`` (400, as before; the resolved question is bounded again by
    :func:`chat_question`)."""
    max_chars = settings.max_query_chars
    if not isinstance(body, dict):
        raise OpenAIError("the request body must be a JSON object", code="invalid_type")
    model = body.get("model", MODEL_ID)
    if not isinstance(model, str) or not model.strip():
        raise OpenAIError("model must be a non-empty string", param="model", code="invalid_type")
    if model != MODEL_ID:
        raise OpenAIError(
            f"The model `{model}` does not exist: this server offers `{MODEL_ID}` (see GET /v1/models)",
            status=404, param="model", code="model_not_found",
        )
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise OpenAIError("stream must be true or false", param="stream", code="invalid_type")
    n = body.get("n", 1)
    if n not in (None, 1) or isinstance(n, bool):
        raise OpenAIError("only n=1 is supported: Qiao gives one answer per question", param="n", code="unsupported_value")
    k = body.get("k", DEFAULT_K)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise OpenAIError(f"k must be an integer from 1 to {MAX_K}", param="k", code="invalid_value")
    try:
        filters = SearchFilters.model_validate(body.get("filters") or {})
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(x) for x in ("filters", *e["loc"]))
        raise OpenAIError(f"{loc}: {e['msg']}", param=loc, code="invalid_value") from None

    raw = body.get("messages")
    if raw is None:
        raise OpenAIError("messages is required: an array of {role, content} objects", param="messages", code="missing_required_parameter")
    if not isinstance(raw, list):
        raise OpenAIError("messages must be an array of {role, content} objects", param="messages", code="invalid_type")
    if not raw:
        raise OpenAIError("messages must contain at least one message", param="messages", code="empty_array")
    if len(raw) > settings.max_chat_messages:
        raise OpenAIError(
            f"the chat has {len(raw)} messages; the limit is {settings.max_chat_messages} (QIAO_MAX_CHAT_MESSAGES): "
            "send only the recent turns",
            status=413, param="messages", code="too_many_messages",
        )
    messages: list[tuple[str, str]] = []
    total = 0
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise OpenAIError(f"messages[{i}] must be an object with role and content", param=f"messages[{i}]", code="invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise OpenAIError(
                f"messages[{i}].role is {role!r}: use one of {', '.join(ROLES[:5])}", param=f"messages[{i}].role", code="invalid_value"
            )
        if "content" not in m and role in ("system", "developer", "user"):
            raise OpenAIError(f"messages[{i}].content is required", param=f"messages[{i}].content", code="missing_required_parameter")
        text = _content_text(m.get("content"), role, i)
        total += len(text)
        if total > settings.max_chat_chars:
            raise OpenAIError(
                f"the chat's messages hold more than {settings.max_chat_chars} characters (QIAO_MAX_CHAT_CHARS; "
                f"{total} up to messages[{i}]): send only the recent turns, or ask the question on its own",
                status=413, param=f"messages[{i}].content", code="context_length_exceeded",
            )
        messages.append((role, text))

    last_role, last = messages[-1]
    param = f"messages[{len(messages) - 1}]"
    if last_role != "user":
        raise OpenAIError(f"the last message must come from the user (it has role {last_role!r}): Qiao answers the last user question", param=f"{param}.role", code="invalid_value")
    if not last.strip():
        raise OpenAIError("the last user message is empty: ask a question", param=f"{param}.content", code="invalid_value")
    if len(last) > max_chars:
        raise OpenAIError(f"the last user message is {len(last)} characters; the limit is {max_chars} (QIAO_MAX_QUERY_CHARS): shorten it", param=f"{param}.content", code="string_above_max_length")
    if "\x00" in last:
        raise OpenAIError("the last user message must not contain NUL characters", param=f"{param}.content", code="invalid_value")
    return ChatRequest(model=model, messages=messages, stream=stream, k=k, filters=filters)


# --- the question to answer -----------------------------------------------------------------------


def chat_question(req: ChatRequest, max_query_chars: int) -> str:
    """The question the chat asks: its last user message with a follow-up resolved against the earlier
    user turns (:func:`qiao.service.followup.resolve_question`), at most ``max_query_chars`` long."""
    question = resolve_question([text for role, text in req.messages if role == "user"])
    if len(question) > max_query_chars:
        last = f"messages[{len(req.messages) - 1}].content"
        raise OpenAIError(
            f"the question, with the follow-up resolved against the earlier messages, is {len(question)} characters; "
            f"the limit is {max_query_chars} (QIAO_MAX_QUERY_CHARS): ask the whole question in one shorter message",
            status=422, param=last, code="string_above_max_length",
        )
    return question


# --- the answer as chat text -------------------------------------------------------------------------


def _get(obj: Any, name: str, default=None):
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def sources_heading(lang: str, question: str) -> str:
    if lang != "zh":
        return "Sources:"
    from qiao.qa.question import chinese_script

    return "來源：" if chinese_script(question) == "hant" else "来源："


def render_content(answer, question: str) -> str:
    """The chat reply: the answer (``[n]`` markers kept), then one ``- [n] title — source, date: “quote”`` line per citation."""
    text = str(_get(answer, "answer", "")).rstrip()
    citations = _get(answer, "citations") or []
    if not citations:
        return text
    lang = _get(answer, "lang") or detect_lang(question)
    lines = []
    for c in citations:
        where = ", ".join(str(x) for x in (_get(c, "source"), _get(c, "date")) if x)
        quote = " ".join(str(_get(c, "quote", "")).split())
        title = " ".join(str(_get(c, "title", "")).split())
        if len(title) > TITLE_CHARS:  # some titles are a whole first paragraph; the full one is in `citations`
            title = title[: TITLE_CHARS - 1].rstrip() + "…"
        lines.append(f"- [{_get(c, 'id')}] {title} — {where}: “{quote}”")
    return f"{text}\n\n{sources_heading(lang, question)}\n" + "\n".join(lines)


def _citations_json(answer) -> list[dict]:
    return [c.to_dict() if hasattr(c, "to_dict") else dict(c) for c in (_get(answer, "citations") or [])]


def split_for_stream(text: str, size: int = 24) -> list[str]:
    """Pieces of ``text`` of about ``size`` characters, cut after whitespace where there is some; joined they are ``text``."""
    pieces: list[str] = []
    buf = ""
    for tok in re.findall(r"\S+\s*|\s+", text):
        while len(tok) > size:  # long runs without spaces (Chinese) are cut by length
            if buf:
                pieces.append(buf)
                buf = ""
            pieces.append(tok[:size])
            tok = tok[size:]
        if buf and len(buf) + len(tok) > size:
            pieces.append(buf)
            buf = ""
        buf += tok
    if buf:
        pieces.append(buf)
    return pieces


# --- running the /ask pipeline ---------------------------------------------------------------------


def _ask(service: QiaoService, snap, question: str, k: int, filters: SearchFilters):
    """The ``/ask`` pipeline's :class:`qa.models.Answer` for ``question`` over snapshot ``snap``."""
    from qiao.qa.pipeline import engine_for  # the qa layer owns the pipeline; this route only calls it

    return engine_for(snap, service.settings).ask(question, k=k, filters=filters.to_filters())


def _parse_chat(raw: bytes, service: QiaoService):
    """Parse and validate one chat body and resolve its question (runs in a worker thread): ``(req, question, snap)``."""
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        raise OpenAIError("the request body is not valid JSON", code="invalid_json") from None
    except RecursionError:
        raise OpenAIError("the request body is nested too deeply: send a flat JSON object with messages", code="invalid_json") from None
    if body is None:
        raise OpenAIError("the request body is empty: send a JSON object with messages", code="invalid_json")
    settings = service.settings
    req = parse_chat_request(body, settings)
    snap = service.snapshot
    if snap is None:
        detail = service.load_error or "no index is loaded"
        raise OpenAIError.of(NoIndex(f"{detail} (build it with `qiao index`)"))
    try:
        check_doc_ids(snap.index.documents, req.filters.doc_id)
    except UnknownDocument as exc:
        raise OpenAIError.of(exc, param="filters.doc_id") from None
    return req, chat_question(req, settings.max_query_chars), snap


def _answer_chat(service: QiaoService, snap, req: ChatRequest, question: str):
    """Answer a parsed chat question (runs in a worker thread, within the request's budget): ``(answer, content)``."""
    try:
        answer = _ask(service, snap, question, req.k, req.filters)
    except (QiaoError, BudgetSpent):
        raise
    except Exception as exc:  # noqa: BLE001 - answered in the OpenAI shape rather than a bare 500
        raise OpenAIError(f"the answer pipeline failed: {type(exc).__name__}: {exc}", status=500, type="server_error") from exc
    return answer, render_content(answer, question)


# --- routes -------------------------------------------------------------------------------------------

_MODEL_CARD = {"id": MODEL_ID, "object": "model", "created": _CREATED, "owned_by": "qiao"}

_CHAT_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["messages"],
                    "properties": {
                        "model": {"type": "string", "default": MODEL_ID},
                        "messages": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["role", "content"],
                                "properties": {
                                    "role": {"type": "string", "enum": list(ROLES[:5])},
                                    "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
                                },
                            },
                        },
                        "stream": {"type": "boolean", "default": False},
                        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": DEFAULT_K, "description": "Qiao: passages of evidence"},
                        "filters": {"type": "object", "description": "Qiao: the facet filters of POST /search"},
                    },
                },
                "example": {"model": MODEL_ID, "messages": [{"role": "user", "content": "Which regions support stem cell clinical research?"}]},
            }
        },
    }
}


@router.get("/models")
def list_models():
    return {"object": "list", "data": [_MODEL_CARD]}


@router.get("/models/{model}")
def get_model(model: str):
    if model != MODEL_ID:
        return OpenAIError(f"The model `{model}` does not exist: this server offers `{MODEL_ID}`", status=404, param="model", code="model_not_found").response()
    return _MODEL_CARD


@router.post("/chat/completions", openapi_extra=_CHAT_BODY_DOC, responses={200: {"description": "a chat.completion, or with stream=true a text/event-stream of chat.completion.chunk events", "content": {"text/event-stream": {"schema": {"type": "object", "properties": {"data": {"type": "string", "description": "a JSON chat.completion.chunk, then [DONE]"}}}}}}})
async def chat_completions(request: Request, service: QiaoService = Depends(get_service)):
    """Answer the last user message with citations, in the OpenAI chat format (``stream`` supported)."""
    try:
        raw = await request.body()  # bounded by QIAO_MAX_BODY_BYTES (api/limits.py)
        # everything after reading the body costs CPU in proportion to the input: parsing, the
        # follow-up resolution and the answer run in a worker thread, never on the event loop
        req, question, snap = await run_in_threadpool(_parse_chat, raw, service)
        s = service.settings
        seconds = s.request_timeout_s + (s.llm_timeout if s.llm_base_url and s.llm_model else 0.0)  # as /ask
        answer, content = await bounded(request, seconds, _answer_chat, service, snap, req, question, lane=heavy_lane(request, question))
    except ClientGone:
        return client_gone_response()
    except QiaoError as exc:
        return OpenAIError.of(exc).response()
    except HTTPException as exc:  # the heavy lane (429) or the time budget (503), with Retry-After
        code, kind = ("rate_limit_exceeded", "rate_limit_error") if exc.status_code == 429 else ("timeout", "server_error")
        return OpenAIError(str(exc.detail), status=exc.status_code, code=code, type=kind, headers=exc.headers).response()
    except OpenAIError as exc:
        return exc.response()

    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    fingerprint = snap.index.manifest.get("build_id")
    extras = {"citations": _citations_json(answer), "answerable": bool(_get(answer, "answerable", False)), "question": question}
    if not req.stream:
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": req.model,
            "system_fingerprint": fingerprint,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content, "refusal": None}, "finish_reason": "stop", "logprobs": None}
            ],
            **extras,
        }

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": req.model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def events() -> Iterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        for piece in split_for_stream(content):
            yield chunk({"content": piece})
        yield chunk({}, "stop", **extras)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
