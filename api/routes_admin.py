"""Managing documents: upload, delete, reindex (write endpoints, behind an optional bearer key).

Uploads are synchronous: the response comes once the files are stored and the
new index is serving. Searches keep being answered from the previous snapshot
while the new index is built (the work runs in a worker thread). An upload whose
text is already indexed is refused with 409, so documents are never duplicated.
"""

from __future__ import annotations

import hmac
from typing import AsyncIterator

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from qiao.api.deps import get_service
from qiao.api.schemas import DocumentMeta
from qiao.service.core import QiaoService, UpdateReport
from qiao.corpus.extract import SUPPORTED_SUFFIXES

router = APIRouter(tags=["manage"])

MAX_FILES_PER_UPLOAD = 100
FRAMING_SLACK = 1 << 20  # multipart headers and boundaries on top of the file bytes


# --- auth -------------------------------------------------------------------------


def require_api_key(request: Request, service: QiaoService = Depends(get_service)) -> None:
    """When ``QIAO_API_KEY`` is set, write endpoints need ``Authorization: Bearer <key>``:
    401 without (or with a malformed) header, 403 with a wrong key."""
    key = service.settings.api_key
    if not key:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(
            status_code=401,
            detail="this endpoint needs an API key: send the header 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": 'Bearer realm="qiao"'},
        )
    if not hmac.compare_digest(token.encode("utf-8"), key.encode("utf-8")):
        raise HTTPException(status_code=403, detail="the API key is not valid for this server")


# --- responses ----------------------------------------------------------------------


class UpdateOut(BaseModel):
    action: str = Field(description='"add", "remove" or "reindex"')
    documents: list[DocumentMeta] = Field(description="the added or removed documents")
    build_id: str
    total_documents: int
    total_chunks: int
    embedded: int = Field(description="passages embedded by this update (the rest came from the cache)")
    took_ms: float
    warnings: list[str] = Field(default_factory=list, description="files skipped while collecting documents")


def _out(report: UpdateReport) -> UpdateOut:
    b = report.build
    return UpdateOut(
        action=report.action, documents=[DocumentMeta(**d) for d in report.documents], build_id=b.build_id,
        total_documents=report.total_documents, total_chunks=report.total_chunks, embedded=b.embedded,
        took_ms=round(b.seconds * 1000, 3), warnings=report.warnings,
    )


# --- upload ---------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """Pass the request body through, stopping as soon as it exceeds ``limit`` bytes
    (covers clients that send no Content-Length)."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise _TooLarge
        yield chunk


def _too_large(limit: int, what: str) -> HTTPException:
    return HTTPException(
        status_code=413,
        detail=f"{what} is larger than the upload limit of {limit} bytes ({limit / 1048576:.1f} MB; QIAO_MAX_UPLOAD_BYTES)",
    )


UPLOAD_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more of " + ", ".join(SUPPORTED_SUFFIXES),
                        }
                    },
                }
            }
        },
    }
}


@router.post(
    "/documents", status_code=201, response_model=UpdateOut, dependencies=[Depends(require_api_key)],
    openapi_extra=UPLOAD_OPENAPI,
    responses={409: {"description": "same content already indexed"}, 413: {"description": "too large"},
               415: {"description": "unsupported file type"}, 422: {"description": "undecodable, binary or empty file"}},
)
async def add_documents(request: Request, service: QiaoService = Depends(get_service)) -> UpdateOut:
    """Upload ``.txt``, ``.md``, ``.html`` or ``.pdf`` files (multipart field ``files``).

    Their text is extracted (HTML: trafilatura, PDF: pypdf) and stored; citations
    point into that stored text. Returns once the documents are searchable. Any bad
    file rejects the whole upload with a message naming it, and nothing changes.
    """
    limit = service.settings.max_upload_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + FRAMING_SLACK:
        raise _too_large(limit, f"the upload ({int(length)} bytes)")
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise HTTPException(
            status_code=415,
            detail=f"send the files as multipart/form-data in a field named 'files' (got Content-Type {ctype or 'none'!r})",
        )
    parser = MultiPartParser(
        request.headers, _limited(request.stream(), limit + FRAMING_SLACK),
        max_files=MAX_FILES_PER_UPLOAD, max_fields=MAX_FILES_PER_UPLOAD,
    )
    try:
        form = await parser.parse()
    except _TooLarge:
        raise _too_large(limit, "the upload") from None
    except MultiPartException as exc:
        raise HTTPException(status_code=400, detail=f"malformed multipart upload: {exc}") from None
    try:
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            raise HTTPException(status_code=400, detail="the upload holds no file: send the files in a field named 'files'")
        files: list[tuple[str, bytes]] = []
        for u in uploads:
            data = await u.read(limit + 1)
            if len(data) > limit:
                raise _too_large(limit, f"{u.filename or 'a file'}")
            files.append((u.filename or "", data))
    finally:
        await form.close()
    # the service's errors (bad file 422, unsupported type 415, duplicate 409, busy 503, failed
    # rebuild 500) are answered by the QiaoError handler (api/errors.py)
    report = await run_in_threadpool(service.add_documents, files, service.settings.http_write_wait)
    return _out(report)


@router.delete("/documents/{doc_id}", response_model=UpdateOut, dependencies=[Depends(require_api_key)])
def delete_document(doc_id: str, service: QiaoService = Depends(get_service)) -> UpdateOut:
    """Remove a document (uploaded, or one of the corpus directory: it stays removed across restarts)."""
    report = service.remove_document(doc_id, service.settings.http_write_wait)  # 404 / 409 / 503 / 500: api/errors.py
    return _out(report)


@router.post("/reindex", response_model=UpdateOut, dependencies=[Depends(require_api_key)])
def reindex(service: QiaoService = Depends(get_service)) -> UpdateOut:
    """Rebuild the index from the documents on disk; only new or changed passages are embedded.
    Searches are answered from the current index until the new one is ready."""
    report = service.reindex(service.settings.http_write_wait)
    return _out(report)
