"""The FastAPI application: ``create_app(settings)``; routers per concern, the index injected."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from qiao.api.admission import HeavyLane
from qiao.api.deps import get_service
from qiao.api.errors import install_error_handlers, register_error_handlers, register_roots
from qiao.api.logging_mw import install_request_logging
from qiao.api.metrics import install_metrics
from qiao.api.middleware import DEFAULT_MAX_BODY, JSONGateMiddleware, NoSniffMiddleware
from qiao.api.limits import BodyLimitMiddleware, route_limits
from qiao.api.origin import CrossSiteMiddleware
from qiao.api.routes_admin import router as admin_router
from qiao.api.routes_ask import router as ask_router
from qiao.api.routes_core import router as core_router
from qiao.api.routes_openai import router as openai_router
from qiao.api.routes_web import router as web_router
from qiao.api.schemas import OpenAIErrorOut, error_responses
from qiao.api.budget import tool_runner
from qiao.integrations.mcp_server import mount_mcp
from qiao.service.core import QiaoService
from qiao.settings import Settings, get_settings


def create_app(settings: Settings | None = None, service: QiaoService | None = None, load: bool = True) -> FastAPI:
    settings = settings or get_settings()
    service = service or QiaoService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load and service.snapshot is None:
            service.try_load()  # a missing index is reported by /health and 503s, not a crash
        started = service.enable_pool()  # one embedding engine per core, short queries in a lane of their own
        yield
        if service.stopping:  # a signal began the shutdown (qiao serve): let a cancelled update finish rolling back
            await run_in_threadpool(service.shutdown, settings.shutdown_timeout_s)
        elif started:
            service.disable_pool()

    app = FastAPI(
        title="Qiao 桥",
        version="0.1.0",
        description="Bilingual (English / 中文) semantic search and question answering with exact citations.",
        lifespan=lifespan,
        # the interactive docs load scripts from a CDN (broken offline, no CSP): off unless QIAO_API_DOCS=1
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
    )
    app.state.service = service
    app.state.heavy_lane = HeavyLane.of(settings)  # admission control for long queries (api/admission.py)
    register_error_handlers(app)
    app.dependency_overrides[get_service] = lambda: service
    app.include_router(core_router)
    app.include_router(ask_router, responses=error_responses(400, 404, 422, 429, 503))  # POST /ask
    app.include_router(openai_router, responses=error_responses(400, 404, 413, 422, 429, 503, model=OpenAIErrorOut))  # OpenAI-compatible /v1/chat/completions, /v1/models
    app.include_router(admin_router, responses=error_responses(400, 401, 403, 404, 409, 413, 415, 422, 503))
    app.include_router(web_router)
    _harden(app, settings)
    install_metrics(app, service)  # GET /metrics (Prometheus) and per-route request metrics
    install_request_logging(app, settings)  # one JSON log line per request, X-Request-ID (outermost middleware)
    mount_mcp(app, service, tool_runner(app, service.settings))  # MCP over streamable HTTP at /mcp (the routes' budget and heavy lane)
    return app


def _harden(app: FastAPI, settings: Settings) -> None:
    """Short JSON errors without paths, a strict JSON gate before any route, ``nosniff`` on everything."""
    register_roots([(settings.data_dir, "<data dir>"), (settings.corpus_dir, "<corpus dir>")])
    install_error_handlers(app)
    app.add_middleware(JSONGateMiddleware, max_body=getattr(settings, "max_body_bytes", None) or DEFAULT_MAX_BODY)
    # cross-site refusal (api/origin.py), then the body limit (api/limits.py): it drains the body before any early answer
    app.add_middleware(CrossSiteMiddleware, allowed_origins=settings.allowed_origins)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, per_route=route_limits(settings))
    app.add_middleware(NoSniffMiddleware)  # added last: outermost, so every answer carries the header
