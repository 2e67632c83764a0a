"""The FastAPI application: ``create_app(settings)``; routers per concern, the index injected."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.deps import get_service
from api.routes_core import router as core_router
from api.service import QiaoService
from settings import Settings, get_settings


def create_app(settings: Settings | None = None, service: QiaoService | None = None, load: bool = True) -> FastAPI:
    settings = settings or get_settings()
    service = service or QiaoService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load and service.snapshot is None:
            service.try_load()  # a missing index is reported by /health and 503s, not a crash
        yield

    app = FastAPI(
        title="Qiao 桥",
        version="0.1.0",
        description="Bilingual (English / 中文) semantic search and question answering with exact citations.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.dependency_overrides[get_service] = lambda: service
    app.include_router(core_router)
    return app
