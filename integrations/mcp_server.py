"""Qiao as a Model Context Protocol server (official ``mcp`` SDK, ``MCPServer``, formerly FastMCP).

Tools (read-only; ``readOnlyHint`` set):

* ``search(query, k=10, mode="hybrid", filters=None)``: ranked passages. Text content: one block
  ``[n] passage`` + ``(title — source, chars start–end, date)`` per hit; structured content:
  ``{query, mode, citations: [{id, doc_id, source, title, start, end, quote, date, regions, rank,
  score, lang}]}``.
* ``ask(question, k=8, filters=None)``: the cited answer of ``POST /ask``. Text content: the answer
  with its ``[n]`` markers, then ``Sources:`` with ``[n] title — source, chars start–end`` and the
  quote; structured content: ``{question, answer, answerable, citations: [...]}``.

``filters`` is the ``/search`` filter object (``lang``, ``region``, ``date_from``, ``date_to``,
``doc_id``), validated by the same rules. In every citation ``quote == original_text[start:end]`` of
the document (for ``search`` the quote is cut from the stored original, not the chunk text).

Resources: ``qiao://documents/{doc_id}`` (the original text, ``text/plain``) and
``qiao://documents/{doc_id}?start=S&end=E`` (exactly ``text[S:E]``); ``resources/list`` lists one
per indexed document.

Errors: bad arguments (schema, empty or too long query, unknown region / doc_id, bad dates) and a
missing index come back as tool results with ``isError: true`` and a message saying what to fix;
an unknown document or a bad span in a resource read is a JSON-RPC invalid-params error. Nothing
here writes.

Transports: ``create_mcp_app`` gives the streamable-HTTP ASGI endpoint that ``create_app`` mounts at
``/mcp`` (stateless, JSON responses: every call is independent, so any worker can answer it and no
session state has to be kept or expired); ``run_stdio`` serves ``qiao mcp``. Searches run in the
SDK's worker threads (the tools are plain functions), so the event loop keeps serving.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, Resource, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

import qiao
from qiao.errors import NoIndex, QiaoError, UnknownDocument, check_doc_ids, mcp_error
from qiao.service.requests import CitationOut as Citation
from qiao.service.requests import SearchFilters

DOC_URI = "qiao://documents/{doc_id}"

INSTRUCTIONS = (
    "Qiao searches and answers questions over bilingual (English / Chinese) policy documents on cell and gene "
    "therapy in China. Use `ask` for a direct question (the answer cites its sources with [n] markers), "
    "`search` for ranked passages. Every citation gives doc_id, start and end: the quote is exactly the "
    "document text between those offsets; read the document as the resource qiao://documents/{doc_id}."
)


# --- argument and result models (filters: qiao.service.requests.SearchFilters, as HTTP) --------


class SearchCitation(Citation):
    rank: int
    score: float
    lang: str


class SearchOutput(BaseModel):
    query: str
    mode: str
    citations: list[SearchCitation]


class AskOutput(BaseModel):
    question: str
    answer: str = Field(description="statements end with [n] markers that refer to citations[].id")
    answerable: bool = Field(description="false when the documents do not answer the question")
    citations: list[Citation]


# --- the server ------------------------------------------------------------------------------------


def _cite_line(c: dict) -> str:
    parts = [c["source"], f"chars {c['start']}–{c['end']}"]
    if c.get("date"):
        parts.append(c["date"])
    return f"{c['title']} — {', '.join(parts)}"


class QiaoMCP(MCPServer):
    """``MCPServer`` whose ``resources/list`` also lists one resource per indexed document."""

    def __init__(self, service, **kw):
        super().__init__(**kw)
        self.service = service

    async def list_resources(self) -> list[Resource]:
        listed = await super().list_resources()
        snap = self.service.snapshot
        if snap is None:
            return listed
        for doc_id, doc in snap.index.documents.items():
            meta = doc.metadata()
            listed.append(
                Resource(
                    uri=DOC_URI.format(doc_id=doc_id),
                    name=meta["source"],
                    title=meta["title"],
                    description=f"{meta['lang']}, {meta.get('date') or 'undated'}, {meta['chars']} characters",
                    mime_type="text/plain",
                )
            )
        return listed


Runner = Callable[..., Awaitable[Any]]
"""``await run(text, fn, *args)``: ``fn(*args)`` run for a tool call about ``text`` (the query or question)."""


async def _in_thread(text: str, fn: Callable[..., Any], *args: Any) -> Any:
    import anyio.to_thread

    return await anyio.to_thread.run_sync(fn, *args)


def build_mcp_server(service, run: Runner | None = None) -> QiaoMCP:
    """The MCP server over a :class:`qiao.service.core.QiaoService` (its serving snapshot, per call).

    ``run`` executes each tool's work. The HTTP app passes its own (api/app.py: in the thread pool within
    ``QIAO_REQUEST_TIMEOUT_S``, long queries behind the heavy lane, exactly as its routes), so an MCP
    call gets the same budget and admission as ``/search``; a spent budget or a full lane is a
    :class:`qiao.errors.QiaoError` and so a tool error that says so. Default (stdio): a worker thread."""
    runner: Runner = run or _in_thread
    settings = service.settings
    max_chars = settings.max_query_chars
    server = QiaoMCP(
        service, name="qiao", title="Qiao 桥", version=qiao.__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )
    read_only = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

    def snapshot():
        service.refresh()  # pick up an index switched by another process
        snap = service.snapshot
        if snap is None:
            raise NoIndex(f"{service.load_error or 'no index is loaded'} (build it with `qiao index`)")
        return snap

    def check_text(value: str, what: str) -> str:
        if not value.strip():
            raise ToolError(f"{what} must not be empty or only whitespace")
        if len(value) > max_chars:
            raise ToolError(f"{what} is {len(value)} characters; the limit is {max_chars}: shorten it")
        if "\x00" in value:
            raise ToolError(f"{what} must not contain NUL characters")
        return value

    def tool_call(fn):
        """Qiao's errors (qiao.errors) as MCP tool errors: an ``isError`` result with the message."""

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except QiaoError as exc:
                raise ToolError(exc.message) from exc

        return inner

    async def bounded_call(text: str, fn, *args):
        try:
            return await runner(text, fn, *args)
        except QiaoError as exc:  # the heavy lane is full, the time budget is spent
            raise ToolError(exc.message) from exc

    @server.tool(annotations=read_only, structured_output=True)
    async def search(
        query: Annotated[str, Field(description="English or Chinese (Simplified or Traditional)")],
        k: Annotated[int, Field(ge=1, le=100, description="number of passages, 1..100")] = 10,
        mode: Annotated[Literal["hybrid", "bm25", "vector"], Field(description="retriever")] = "hybrid",
        filters: SearchFilters | None = None,
    ) -> Annotated[CallToolResult, SearchOutput]:
        """Ranked passages from the documents, each with its source and exact character offsets."""
        check_text(query, "query")
        return await bounded_call(query, run_search, query, k, mode, filters)

    @tool_call
    def run_search(query: str, k: int, mode: Literal["hybrid", "bm25", "vector"], filters: SearchFilters | None) -> CallToolResult:
        snap = snapshot()
        check_doc_ids(snap.index.documents, filters.doc_id if filters else None)
        hits = snap.retriever.search(query, k=k, mode=mode, filters=filters.to_filters() if filters else None)
        docs = snap.index.documents
        citations = []
        for n, h in enumerate(hits, 1):
            d = h.to_dict()
            citations.append(
                SearchCitation(
                    id=n, doc_id=d["doc_id"], source=d["source"], title=d["title"], start=d["start"], end=d["end"],
                    quote=docs[d["doc_id"]].text[d["start"] : d["end"]], date=d.get("date"),
                    regions=list(d.get("regions") or ()), rank=d["rank"], score=d["score"], lang=d["lang"],
                )
            )
        out = SearchOutput(query=query, mode=mode, citations=citations)
        if citations:
            text = "\n\n".join(f"[{c.id}] {' '.join(c.quote.split())}\n    ({_cite_line(c.model_dump())})" for c in citations)
        else:
            text = "No passages match (try fewer filters or another wording)."
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=out.model_dump(mode="json"))

    @server.tool(annotations=read_only, structured_output=True)
    async def ask(
        question: Annotated[str, Field(description="English or Chinese (Simplified or Traditional)")],
        k: Annotated[int, Field(ge=1, le=100, description="evidence passages to answer from, 1..100")] = 8,
        filters: SearchFilters | None = None,
    ) -> Annotated[CallToolResult, AskOutput]:
        """A short answer whose every statement ends with a [n] marker citing the exact source span;
        says so (answerable=false) when the documents do not answer the question."""
        check_text(question, "question")
        return await bounded_call(question, run_ask, question, k, filters)

    @tool_call
    def run_ask(question: str, k: int, filters: SearchFilters | None) -> CallToolResult:
        from qiao.qa.pipeline import engine_for

        snap = snapshot()
        check_doc_ids(snap.index.documents, filters.doc_id if filters else None)
        answer = engine_for(snap, settings).ask(question, k=k, filters=filters.to_filters() if filters else None)
        data = answer.to_dict()
        out = AskOutput(
            question=question, answer=data["answer"], answerable=data["answerable"],
            citations=[Citation(**c) for c in data["citations"]],
        )
        lines = [out.answer]
        if out.citations:
            lines += ["", "Sources:"]
            for c in out.citations:
                lines.append(f"[{c.id}] {_cite_line(c.model_dump())}")
                lines.append(f"    \u201c{' '.join(c.quote.split())}\u201d")
        return CallToolResult(
            content=[TextContent(type="text", text="\n".join(lines))], structured_content=out.model_dump(mode="json")
        )

    @server.resource(DOC_URI + "{?start,end}", name="document", mime_type="text/plain")
    def document(doc_id: str, start: int | None = None, end: int | None = None) -> str:
        """The original text of an indexed document; with start and end, exactly text[start:end]."""
        snap = service.snapshot
        if snap is None:
            raise MCPError(**mcp_error(NoIndex(f"{service.load_error or 'no index is loaded'} (build it with `qiao index`)")))
        doc = snap.index.documents.get(doc_id)
        if doc is None:
            raise ResourceNotFoundError(str(UnknownDocument(doc_id)))
        if start is None and end is None:
            return doc.text
        if start is None or end is None:
            raise MCPError(code=INVALID_PARAMS, message="give both start and end to read a span")
        if not (0 <= start < end <= len(doc.text)):
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"span [{start}, {end}) is out of range: need 0 <= start < end <= {len(doc.text)} for this document",
            )
        return doc.text[start:end]

    return server


# --- transports -------------------------------------------------------------------------------------


class MCPEndpoint:
    """The streamable-HTTP endpoint mounted at ``/mcp``.

    A ``StreamableHTTPSessionManager`` runs once; a FastAPI app may go through its lifespan more
    than once (tests open several ``TestClient`` contexts). So :meth:`lifespan` makes a fresh
    manager for every run of the app's lifespan, and requests go to the one running now (503 when
    none is: the app was called without running its lifespan)."""

    def __init__(self, server: QiaoMCP, host: str):
        self.server = server
        self.host = host
        self._handler = None

    @asynccontextmanager
    async def lifespan(self):
        self.server.streamable_http_app(
            streamable_http_path="/mcp", stateless_http=True, json_response=True, host=self.host
        )
        manager = self.server.session_manager
        async with manager.run():
            self._handler = manager.handle_request
            try:
                yield
            finally:
                self._handler = None

    async def __call__(self, scope, receive, send):
        handler = self._handler
        if handler is None:
            from starlette.responses import JSONResponse

            await JSONResponse({"detail": "the MCP endpoint is not running (the server is starting or stopping)"}, 503)(
                scope, receive, send
            )
            return
        await handler(scope, receive, send)


def mount_mcp(app, service, run: Runner | None = None) -> MCPEndpoint:
    """Serve MCP over streamable HTTP at ``/mcp`` of ``app``, its session manager running inside the
    app's lifespan (wrapped around whatever lifespan the app already has).

    DNS-rebinding protection (the SDK's: Host and Origin must be loopback) is on when the server
    binds a loopback address (``QIAO_HOST``, default 127.0.0.1), as the SDK does by default."""
    from starlette.routing import Route

    endpoint = MCPEndpoint(build_mcp_server(service, run), host=str(service.settings.host))
    app.router.routes.append(Route("/mcp", endpoint=endpoint, methods=["GET", "POST", "DELETE"], include_in_schema=False))
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a):
        async with inner(a) as state, endpoint.lifespan():
            yield state

    app.router.lifespan_context = lifespan
    return endpoint


def run_stdio(service) -> None:
    """Serve MCP on stdin/stdout until the client closes it (``qiao mcp``)."""
    build_mcp_server(service).run("stdio")
