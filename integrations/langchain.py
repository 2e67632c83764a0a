"""LangChain adapter: :class:`QiaoRetriever`, a ``BaseRetriever`` over a local index or a running Qiao server.

Each hit becomes a ``langchain_core.documents.Document``::

    page_content = the passage text
    id           = chunk_id
    metadata     = {doc_id, chunk_id, source, title, start, end, date, regions, lang, heading,
                    rank, score, bm25_score, vector_score, bm25_rank, vector_rank}

``start``/``end`` are character offsets into the original document, so a citation can be
checked with ``GET /documents/{doc_id}?start=..&end=..``. The facet filters of ``POST /search``
(``lang``, ``region``, ``date_from``, ``date_to``, ``doc_id``) are fields of the retriever;
``retriever.with_filters(region=["Tianjin"])`` gives a filtered copy.

Because it is a ``BaseRetriever`` it is a Runnable: it composes in LCEL chains
(``retriever | format_docs``), and ``retriever.as_tool()`` gives an agent a ``StructuredTool`` whose
arguments are the query and the optional per-call ``k``, ``mode`` and filters.

Per-call arguments, as LangChain's own retrievers take them: ``retriever.invoke(q, k=1)``,
``ainvoke(q, region=["北京"])``, ``batch([q1, q2], k=3)``. ``k``, ``mode`` and the filter fields
given to a call replace the instance's for that call only; they are validated by the same model as
the constructor (a bad value raises ``pydantic.ValidationError`` naming the field, an unknown
argument a ``TypeError`` listing the accepted ones), so a typo never falls back to a silent default.

Async: the URL backend awaits ``httpx.AsyncClient`` (no thread, the event loop is never blocked);
the local backend's search is CPU work (embedding, FAISS, BM25), so ``ainvoke`` runs it in a worker
thread of the loop's executor. LangChain's standard ``RetrieversIntegrationTests`` run on both
backends in tests/integration/test_langchain_standard.py.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import BaseModel, Field, model_validator

from qiao.retriever.models import Filters, Hit
from qiao.service.requests import SearchFilters


CALL_ARGS = ("k", "mode", "lang", "region", "date_from", "date_to", "doc_id")
"""Fields a single ``invoke`` / ``ainvoke`` / ``batch`` call may override."""

_IGNORED_CALL_ARGS = frozenset({"verbose"})  # BaseRetriever.invoke forwards its own ``verbose`` flag


class QiaoSearchError(RuntimeError):
    """A search could not run: no index loaded, the server refused the request, or it is unreachable."""


def hit_metadata(hit: dict) -> dict:
    """Metadata of one hit in the ``/search`` JSON shape (``Hit.to_dict()``), flattened for LangChain."""
    scores = hit.get("scores") or {}
    ranks = hit.get("ranks") or {}
    return {
        "doc_id": hit["doc_id"],
        "chunk_id": hit["chunk_id"],
        "source": hit["source"],
        "title": hit["title"],
        "start": hit["start"],
        "end": hit["end"],
        "date": hit.get("date"),
        "regions": list(hit.get("regions") or ()),
        "lang": hit["lang"],
        "heading": hit.get("heading"),
        "rank": hit["rank"],
        "score": hit["score"],
        "bm25_score": scores.get("bm25"),
        "vector_score": scores.get("vector"),
        "bm25_rank": ranks.get("bm25"),
        "vector_rank": ranks.get("vector"),
    }


def hit_to_document(hit: dict) -> Document:
    """One ``/search`` hit (dict) -> LangChain ``Document`` (id = chunk_id)."""
    return Document(page_content=hit["text"], metadata=hit_metadata(hit), id=hit["chunk_id"])


def _error_detail(resp: httpx.Response) -> str:
    """The server's reason for a refused request, in one line."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or resp.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI validation errors
        return "; ".join(f"{'.'.join(map(str, e.get('loc', ())[1:]))}: {e.get('msg')}" for e in detail if isinstance(e, dict))
    return str(detail)


class QiaoToolInput(BaseModel):
    """Arguments of ``QiaoRetriever.as_tool()``: the query and the optional per-call overrides."""

    query: str = Field(description="the search query, in English or Chinese")
    k: int | None = Field(None, ge=1, le=100, description="number of passages, 1..100")
    mode: Literal["hybrid", "bm25", "vector"] | None = None
    lang: list[Literal["en", "zh"]] | None = Field(None, description='languages to keep: "en", "zh"')
    region: list[str] | None = Field(None, description="regions in English, Simplified or Traditional Chinese")
    date_from: str | None = Field(None, description="inclusive, YYYY-MM-DD")
    date_to: str | None = Field(None, description="inclusive, YYYY-MM-DD")
    doc_id: list[str] | None = Field(None, description="restrict to these document ids")


class QiaoRetriever(BaseRetriever):
    """Qiao hybrid search as a LangChain retriever.

    Exactly one backend:

    * ``backend``: a local searcher: an ``qiao.service.core.QiaoService`` (its current snapshot is used
      on every call, so index rebuilds are picked up) or anything with
      ``search(query, k, mode, filters) -> list[Hit]`` such as ``HybridRetriever``;
    * ``base_url``: a running Qiao server (``POST {base_url}/search``).

    Build one with :meth:`from_service`, :meth:`from_settings` (load the index on disk) or
    :meth:`from_url`.
    """

    backend: Any = Field(default=None, exclude=True, repr=False)
    base_url: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    timeout: float = Field(30.0, gt=0)

    k: int = Field(5, ge=1, le=100, description="number of passages, 1..100")
    mode: Literal["hybrid", "bm25", "vector"] = "hybrid"
    lang: list[Literal["en", "zh"]] | None = None
    region: list[str] | None = Field(None, description="regions in English, Simplified or Traditional Chinese")
    date_from: str | None = Field(None, description="inclusive, YYYY-MM-DD")
    date_to: str | None = Field(None, description="inclusive, YYYY-MM-DD")
    doc_id: list[str] | None = None

    # --- validation: the filter fields go through the one SearchFilters model (as POST /search, MCP) ----
    @model_validator(mode="after")
    def _check(self):
        if (self.backend is None) == (self.base_url is None):
            raise ValueError("give exactly one of backend (a local index) or base_url (a running Qiao server)")
        if self.backend is not None and not (hasattr(self.backend, "snapshot") or hasattr(self.backend, "search")):
            raise ValueError("backend must be a QiaoService or have search(query, k, mode, filters)")
        self.region = self.search_filters().region  # validated and resolved to canonical names
        if self.base_url is not None:
            self.base_url = self.base_url.rstrip("/")
        return self

    # --- constructors ----------------------------------------------------------------------------
    @classmethod
    def from_service(cls, service, **kw) -> "QiaoRetriever":
        """Over a running ``QiaoService`` (its index must be loaded)."""
        return cls(backend=service, **kw)

    @classmethod
    def from_settings(cls, settings=None, **kw) -> "QiaoRetriever":
        """Load the index under ``settings.index_dir`` (default: ``get_settings()``); raises if there is none."""
        from qiao.service.core import QiaoService  # local import: only this constructor needs the service layer
        from qiao.index.store import IndexLoadError
        from qiao.settings import get_settings

        service = QiaoService(settings or get_settings())
        try:
            service.load()
        except IndexLoadError as exc:
            raise QiaoSearchError(f"{exc} (build it with `qiao index`)") from exc
        return cls(backend=service, **kw)

    @classmethod
    def from_url(cls, base_url: str, api_key: str | None = None, **kw) -> "QiaoRetriever":
        """Over a Qiao server, e.g. ``http://127.0.0.1:8000``."""
        return cls(base_url=base_url, api_key=api_key, **kw)

    def with_filters(self, **kw) -> "QiaoRetriever":
        """A validated copy with some fields changed, e.g. ``with_filters(region=["北京"], k=3)``."""
        data = {f: getattr(self, f) for f in type(self).model_fields}
        data.update(kw)
        return type(self)(**data)

    def _for_call(self, kwargs: dict) -> "QiaoRetriever":
        """The retriever one call runs with: this one, or a validated copy with the call's
        ``k`` / ``mode`` / filter arguments in place of the instance's."""
        overrides = {name: value for name, value in kwargs.items() if name not in _IGNORED_CALL_ARGS}
        unknown = sorted(set(overrides) - set(CALL_ARGS))
        if unknown:
            raise TypeError(
                f"unknown argument(s) {', '.join(map(repr, unknown))} for QiaoRetriever.invoke; "
                f"per-call arguments are {', '.join(CALL_ARGS)}"
            )
        return self.with_filters(**overrides) if overrides else self

    # --- as an agent tool --------------------------------------------------------------------------
    def as_tool(self, args_schema=None, *, name: str | None = None, description: str | None = None, arg_types=None):
        """An agent tool. Without ``args_schema`` / ``arg_types`` it is a ``StructuredTool`` whose
        arguments are ``query`` plus the optional per-call ``k``, ``mode`` and filters (so a model can
        ask for 3 passages from Beijing); a bare string still works (it is the query).

        ``Runnable.as_tool()`` would give a plain ``Tool`` here (the input is a string), whose input
        schema LangChain derives from ``invoke``'s signature (``input``, ``config``): it fails
        LangChain's own ``test_input_schema_matches_invoke_params``."""
        if args_schema is not None or arg_types is not None:
            return super().as_tool(args_schema, name=name, description=description, arg_types=arg_types)
        from langchain_core.tools import StructuredTool

        def run(query: str, callbacks=None, **kw) -> list[Document]:
            return self.invoke(query, config={"callbacks": callbacks}, **{a: v for a, v in kw.items() if v is not None})

        async def arun(query: str, callbacks=None, **kw) -> list[Document]:
            return await self.ainvoke(query, config={"callbacks": callbacks}, **{a: v for a, v in kw.items() if v is not None})

        return StructuredTool.from_function(
            func=run,
            coroutine=arun,
            name=name or "qiao_search",
            description=description
            or "Search bilingual (English / Chinese) documents; returns passages with their source and exact offsets.",
            args_schema=QiaoToolInput,
        )

    # --- the search itself -----------------------------------------------------------------------
    def search_filters(self) -> SearchFilters:
        """This retriever's filter fields, validated like ``POST /search``'s (a ValidationError names the field)."""
        return SearchFilters(lang=self.lang, region=self.region, date_from=self.date_from, date_to=self.date_to, doc_id=self.doc_id)

    def filters(self) -> Filters:
        return self.search_filters().to_filters()

    def _request_body(self, query: str) -> dict:
        filters = {
            name: getattr(self, name)
            for name in ("lang", "region", "date_from", "date_to", "doc_id")
            if getattr(self, name)
        }
        return {"query": query, "k": self.k, "mode": self.mode, "filters": filters}

    def _headers(self) -> dict:
        if not self.api_key:
            return {}
        return {"Authorization": f"Bearer {self.api_key}", "X-API-Key": self.api_key}

    def _local_search(self, query: str) -> list[Hit]:
        backend = self.backend
        if hasattr(backend, "snapshot"):  # a QiaoService: take the snapshot serving right now
            snap = backend.snapshot
            if snap is None:
                raise QiaoSearchError(f"{getattr(backend, 'load_error', None) or 'no index is loaded'} (build it with `qiao index`)")
            searcher, documents = snap.retriever, snap.index.documents
        else:
            searcher = backend
            documents = getattr(getattr(backend, "index", None), "documents", None)
        if documents is not None:
            for d in self.doc_id or ():
                if d not in documents:
                    raise QiaoSearchError(f"unknown doc_id {d!r} in filters")
        if not query.strip():
            raise QiaoSearchError("query must not be empty or only whitespace")
        return searcher.search(query, k=self.k, mode=self.mode, filters=self.filters())

    def _parse(self, resp: httpx.Response) -> list[Document]:
        if resp.status_code != 200:
            raise QiaoSearchError(f"Qiao server at {self.base_url} answered {resp.status_code}: {_error_detail(resp)}")
        return [hit_to_document(h) for h in resp.json()["hits"]]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        call = self._for_call(kwargs)
        if call.backend is not None:
            return [hit_to_document(h.to_dict()) for h in call._local_search(query)]
        try:
            resp = httpx.post(f"{call.base_url}/search", json=call._request_body(query), headers=call._headers(), timeout=call.timeout)
        except httpx.HTTPError as exc:
            raise QiaoSearchError(f"cannot reach the Qiao server at {call.base_url}: {exc}") from exc
        return call._parse(resp)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        call = self._for_call(kwargs)
        if call.backend is not None:
            from langchain_core.runnables.config import run_in_executor

            hits = await run_in_executor(None, call._local_search, query)
            return [hit_to_document(h.to_dict()) for h in hits]
        try:
            async with httpx.AsyncClient(timeout=call.timeout) as client:
                resp = await client.post(f"{call.base_url}/search", json=call._request_body(query), headers=call._headers())
        except httpx.HTTPError as exc:
            raise QiaoSearchError(f"cannot reach the Qiao server at {call.base_url}: {exc}") from exc
        return call._parse(resp)


def format_citation(doc: Document) -> str:
    """``title — source, chars start–end, date`` for a Document from :class:`QiaoRetriever`."""
    m = doc.metadata
    parts = [str(m.get("source", "?")), f"chars {m.get('start')}–{m.get('end')}"]
    if m.get("date"):
        parts.append(str(m["date"]))
    return f"{m.get('title', '')} — {', '.join(parts)}"


def format_documents(docs: list[Document]) -> str:
    """Numbered passages ``[n] text`` each followed by its citation line: a context block for a prompt."""
    return "\n\n".join(
        f"[{n}] {' '.join(doc.page_content.split())}\n    ({format_citation(doc)})" for n, doc in enumerate(docs, 1)
    )


__all__ = ["CALL_ARGS", "QiaoRetriever", "QiaoToolInput", "QiaoSearchError", "hit_to_document", "hit_metadata", "format_citation", "format_documents"]
