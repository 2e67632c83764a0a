"""Dependencies injected into the routes."""

from __future__ import annotations

from fastapi import Depends

from qiao.errors import NoIndex

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
