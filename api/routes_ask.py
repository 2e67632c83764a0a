"""``POST /ask``: an answer in the question's language with exact citations, or an honest "not found"."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from qiao.api.budget import ClientGone, bounded, client_gone_response
from qiao.api.deps import check_text_length, get_service, get_snapshot, heavy_lane
from qiao.api.schemas import AskRequest, HitOut
from qiao.errors import check_doc_ids
from qiao.service.core import QiaoService, Snapshot
from qiao.qa.pipeline import engine_for
from qiao.service.requests import CitationOut

router = APIRouter()


class AskResponse(BaseModel):
    question: str
    answer: str
    answerable: bool
    citations: list[CitationOut]
    hits: list[HitOut]
    took_ms: float


@router.post("/ask", response_model=AskResponse, tags=["qa"])
async def ask(
    req: AskRequest, request: Request, snap: Snapshot = Depends(get_snapshot), service: QiaoService = Depends(get_service)
) -> AskResponse:
    """Answer from the indexed documents: a lead sentence, then the supporting statements, each
    ending with a citation marker ``[n]`` whose citation points at the exact span of the source.
    ``answerable`` is false when the documents do not answer the question; ``hits`` then still
    shows the nearest passages. Runs in a worker thread within ``QIAO_REQUEST_TIMEOUT_S`` (503 after
    it); a client that disconnects cancels its queued work."""
    check_text_length(req.question, "question", service)
    check_doc_ids(snap.index.documents, req.filters.doc_id)
    try:
        s = service.settings
        seconds = s.request_timeout_s + (s.llm_timeout if s.llm_base_url and s.llm_model else 0.0)  # a chat model may write it
        return await bounded(request, seconds, _ask, req, snap, service, lane=heavy_lane(request, req.question))
    except ClientGone:
        return client_gone_response()


def _ask(req: AskRequest, snap: Snapshot, service: QiaoService) -> AskResponse:
    t0 = time.perf_counter()
    answer = engine_for(snap, service.settings).ask(req.question, k=req.k, filters=req.filters.to_filters())
    out = answer.to_dict()
    out["took_ms"] = round((time.perf_counter() - t0) * 1000, 3)
    return AskResponse(**out)
