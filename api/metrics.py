"""``GET /metrics``: Prometheus text format (``prometheus_client``).

What is exported, and why each:

* ``qiao_http_requests_total{method,route,status}`` and ``qiao_http_request_duration_seconds{…}``
  (histogram): load and latency per route. ``route`` is the route *template* (``/documents/{doc_id}``),
  never the raw path, so label cardinality stays bounded whatever clients send; unmatched paths
  count as ``route="<unmatched>"``. Latency runs from the request's arrival until the last body byte
  is sent (for a stream: until it ends).
* ``qiao_index_loaded``, ``qiao_index_chunks``, ``qiao_index_documents``: read from the serving
  snapshot at scrape time (a collector, not a gauge updated by hand, so a swap by another process
  picked up by ``refresh()`` is seen without bookkeeping).
* the process-wide figures of :mod:`qiao.metrics` (embedding time, embedding-cache hits/misses and
  hit ratio, embedding queue wait, update durations and failures);
* the standard ``process_*`` metrics (CPU seconds, resident memory, open fds).

Each app gets its own ``CollectorRegistry``: tests and embedders that create several apps in one
process don't collide on metric names, and ``/metrics`` shows only its own HTTP traffic.

Wired by :func:`install_metrics` (one line in ``create_app``). The middleware is plain ASGI (not
``BaseHTTPMiddleware``), so streamed responses (SSE of ``/v1/chat/completions`` and ``/mcp``) pass
through unbuffered.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

# Search and ask take ~5-200 ms on the seed corpus on a laptop CPU; uploads and reindex take seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)


def route_of(scope) -> str:
    """The matched route's template, the mount path for a mount, ``<unmatched>`` otherwise."""
    route = scope.get("route")  # set by FastAPI for its own routes
    path = getattr(route, "path", None) or getattr(route, "path_format", None)
    if path:
        return path
    endpoint = scope.get("endpoint")  # a plain Starlette route (/mcp): find it by its endpoint
    if endpoint is not None:
        for r in getattr(getattr(scope.get("app"), "router", None), "routes", ()):
            if getattr(r, "endpoint", None) is endpoint:
                return r.path
    root = scope.get("root_path") or ""
    return root if root else "<unmatched>"


class IndexCollector:
    """Gauges read from the service's serving snapshot at scrape time."""

    def __init__(self, service):
        self.service = service

    def describe(self):
        return []  # unchecked collector: names are produced at collect time

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        snap = self.service.snapshot
        loaded = GaugeMetricFamily("qiao_index_loaded", "1 when an index is loaded and serving, else 0")
        loaded.add_metric([], 1.0 if snap is not None else 0.0)
        chunks = GaugeMetricFamily("qiao_index_chunks", "Passages (chunks) in the serving index")
        chunks.add_metric([], float(snap.index.size) if snap is not None else 0.0)
        docs = GaugeMetricFamily("qiao_index_documents", "Documents in the serving index")
        docs.add_metric([], float(len(snap.index.documents)) if snap is not None else 0.0)
        yield from (loaded, chunks, docs)


class MetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status."""

    def __init__(self, app, requests, latency):
        self.app = app
        self.requests = requests
        self.latency = latency

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            labels = (scope["method"], route_of(scope), str(status["code"]))
            self.requests.labels(*labels).inc()
            self.latency.labels(*labels).observe(time.perf_counter() - t0)


def install_metrics(app: FastAPI, service) -> None:
    """Create the app's registry, add the middleware and the ``/metrics`` route."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

    from qiao import metrics as qiao_metrics

    registry = CollectorRegistry(auto_describe=True)
    requests = Counter("qiao_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry)
    latency = Histogram(
        "qiao_http_request_duration_seconds", "HTTP request latency until the last byte is sent",
        ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=registry,
    )
    registry.register(IndexCollector(service))
    registry.register(qiao_metrics.registry())
    ProcessCollector(registry=registry)
    app.state.metrics_registry = registry
    app.add_middleware(MetricsMiddleware, requests=requests, latency=latency)
    app.include_router(router)
