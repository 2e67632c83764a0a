"""The web page: ``/`` and ``/static/<file>`` (plain HTML/CSS/JS from ``api/static``), and ``/regions``.

The page makes no request outside this server; the Content-Security-Policy
enforces that in the browser too.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse
from pydantic import BaseModel

from qiao.api.deps import get_service
from qiao.service.core import QiaoService
from qiao.corpus.gazetteer import get_region

router = APIRouter()

STATIC_DIR = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"}


def _static(name: str) -> FileResponse:
    path = STATIC_DIR / name
    # only plain files directly in api/static, with a known type: no traversal, no listing
    if "/" in name or "\\" in name or name.startswith(".") or path.suffix not in MEDIA_TYPES or not path.is_file():
        raise HTTPException(status_code=404, detail=f"no static file {name!r}")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


@router.get("/", include_in_schema=False)
def index_page() -> FileResponse:
    return _static("index.html")


@router.get("/static/{name}", include_in_schema=False)
def static_file(name: str) -> FileResponse:
    return _static(name)


class RegionOut(BaseModel):
    key: str
    en: str
    zh_hans: str
    zh_hant: str
    kind: str
    chunks: int


class RegionList(BaseModel):
    regions: list[RegionOut]


@router.get("/regions", response_model=RegionList, tags=["search"])
def regions(service: QiaoService = Depends(get_service)) -> RegionList:
    """Regions mentioned in the indexed documents (for the region filter), most mentioned first."""
    snap = service.snapshot
    if snap is None:
        return RegionList(regions=[])
    out = []
    for key, rows in snap.index.region_rows.items():
        r = get_region(key)
        if r is not None:
            out.append(RegionOut(key=key, en=r.en, zh_hans=r.zh_hans, zh_hant=r.zh_hant, kind=r.kind, chunks=len(rows)))
    out.sort(key=lambda r: (-r.chunks, r.key))
    return RegionList(regions=out)
