"""Dependencies injected into the routes."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError

from qiao.errors import NoIndex

from qiao.api.admission import HeavyLane
from qiao.api.schemas import too_long
from qiao.service.core import QiaoService, Snapshot


def get_service() -> QiaoService:  # replaced by create_app through dependency_overrides
    raise RuntimeError("get_service is bound by create_app")


def get_snapshot(service: QiaoService = Depends(get_service)) -> Snapshot:
    service.refresh()  # pick up an index switched by another process (qiao add / remove / index)
    snap = service.snapshot
    if snap is None:
        detail = service.load_error or "no index is loaded"
        raise NoIndex(f"{detail} (build it with `qiao index`)")
    return snap


def heavy_lane(request: Request, *texts: str) -> HeavyLane | None:
    """The app's heavy lane when ``texts`` make a heavy request (api/admission.py), else None."""
    lane: HeavyLane | None = getattr(request.app.state, "heavy_lane", None)
    return lane if lane is not None and lane.is_heavy(*texts) else None


def check_text_length(text: str, field: str, service: QiaoService) -> None:
    """A 422 (FastAPI's validation shape, without echoing the text) when ``text`` is longer than
    ``QIAO_MAX_QUERY_CHARS``; the one place /search and /ask take the limit from."""
    msg = too_long(text, field, service.settings.max_query_chars)
    if msg:
        raise RequestValidationError(
            [{"type": "string_too_long", "loc": ("body", field), "msg": msg, "ctx": {"max_length": service.settings.max_query_chars}}]
        )
