"""Health, search and documents."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from qiao.api.budget import ClientGone, bounded, client_gone_response
from qiao.api.deps import check_text_length, get_service, get_snapshot, heavy_lane
from qiao.api.errors import redact_paths
from qiao.api.schemas import (
    DocumentList,
    DocumentMeta,
    DocumentOut,
    DocumentSpan,
    HealthResponse,
    SearchRequest,
    SearchResponse,
    error_responses,
)
from qiao.errors import UnknownDocument, check_doc_ids
from qiao.service.core import QiaoService, Snapshot

router = APIRouter()


@router.get("/health", response_model=HealthResponse, tags=["meta"])
def health(service: QiaoService = Depends(get_service)) -> HealthResponse:
    snap = service.snapshot
    if snap is None:
        return HealthResponse(
            status="no_index", index_loaded=False, chunks=0, documents=0,
            embedder=service.settings.embedder, detail=redact_paths(service.load_error) if service.load_error else None,
        )
    m = snap.index.manifest
    return HealthResponse(
        status="ok", index_loaded=True, chunks=snap.index.size, documents=len(snap.index.documents),
        embedder=m["embedder"]["model_id"], build_id=m.get("build_id"),
    )


@router.post("/search", response_model=SearchResponse, tags=["search"], responses=error_responses(400, 404, 422, 429, 503))
async def search(
    req: SearchRequest, request: Request, snap: Snapshot = Depends(get_snapshot), service: QiaoService = Depends(get_service)
) -> SearchResponse:
    """Ranked passages for a query in English or Chinese, with their exact offsets into the source.
    Runs in a worker thread within ``QIAO_REQUEST_TIMEOUT_S`` (503 after it); a client that
    disconnects cancels its queued work. A long query waits for the heavy lane (429 busy with
    ``Retry-After`` when it is full)."""
    check_text_length(req.query, "query", service)
    check_doc_ids(snap.index.documents, req.filters.doc_id)
    try:
        return await bounded(request, service.settings.request_timeout_s, _search, req, snap, lane=heavy_lane(request, req.query))
    except ClientGone:
        return client_gone_response()


def _search(req: SearchRequest, snap: Snapshot) -> SearchResponse:
    t0 = time.perf_counter()
    hits = snap.retriever.search(req.query, k=req.k, mode=req.mode, filters=req.filters.to_filters())
    return SearchResponse(
        query=req.query, mode=req.mode, took_ms=round((time.perf_counter() - t0) * 1000, 3),
        hits=[h.to_dict() for h in hits],
    )


def _doc_meta(snap: Snapshot, doc_id: str) -> dict:
    d = snap.index.documents[doc_id]
    meta = d.metadata()
    meta["chunks"] = int((snap.index.chunk_doc == doc_id).sum())
    return meta


@router.get("/documents", response_model=DocumentList, tags=["documents"], responses=error_responses(503))
def list_documents(snap: Snapshot = Depends(get_snapshot)) -> DocumentList:
    return DocumentList(documents=[DocumentMeta(**_doc_meta(snap, d)) for d in snap.index.documents])


def line_of(text: str, offset: int) -> int:
    """1-based line number of character ``offset``."""
    return text.count("\n", 0, offset) + 1


@router.get("/documents/{doc_id}", response_model=DocumentOut, tags=["documents"], responses=error_responses(404, 422, 503))
def get_document(
    doc_id: str,
    start: int | None = Query(None, ge=0, description="span start (character offset), with end"),
    end: int | None = Query(None, ge=0, description="span end (exclusive), with start"),
    snap: Snapshot = Depends(get_snapshot),
) -> DocumentOut:
    """The original text and metadata; with ``start``/``end``, the span marked with its line numbers."""
    doc = snap.index.documents.get(doc_id)
    if doc is None:
        raise UnknownDocument(doc_id)
    span = None
    if start is not None or end is not None:
        if start is None or end is None:
            raise HTTPException(status_code=422, detail="give both start and end to mark a span")
        if not (0 <= start < end <= len(doc.text)):
            raise HTTPException(
                status_code=422,
                detail=f"span [{start}, {end}) is out of range: need 0 <= start < end <= {len(doc.text)} for this document",
            )
        span = DocumentSpan(
            start=start, end=end, text=doc.text[start:end],
            line_start=line_of(doc.text, start), line_end=line_of(doc.text, end - 1),
        )
    return DocumentOut(**_doc_meta(snap, doc_id), text=doc.text, span=span)
