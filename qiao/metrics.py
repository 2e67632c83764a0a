"""Process-wide operational metrics that any layer may feed: embedding time, embedding-cache hits and
misses, embedding queue wait, index update durations and failures.

Why here (the root package) and not in ``api/``: the figures are produced low down (``index/``
embeds, ``service/`` updates) and the rule is that nothing imports upward; ``qiao.metrics`` sits
beside ``qiao.settings``, importable from every layer. ``prometheus_client`` is imported on the
first observation, not when this module is imported, so ``import qiao.index`` stays as light as it
was. ``/metrics`` (``qiao.api.metrics``) renders :data:`REGISTRY` next to the per-app HTTP metrics.

Feeding it (each call is a few microseconds: a lock-free dict lookup and a prometheus observe):

* ``observe_embedding(kind, texts, seconds)``: one call of the model (``kind`` = ``"query"`` or
  ``"passage"``), after the cache; ``texts`` = how many texts the model embedded.
* ``observe_embedding_cache(kind, hits, misses)``: lookups answered by the cache vs sent to the model.
  ``qiao_embedding_cache_hit_ratio`` = hits / (hits + misses) over the process lifetime (per kind);
  for a windowed rate use ``rate(hits) / (rate(hits) + rate(misses))`` in PromQL.
* ``observe_queue_wait(seconds)``: for an embedding queue / worker pool: time a request waited before
  a worker took it.
* ``@timed_update("add")``: wraps an index update; records its duration, and on an exception a
  failure labelled with the exception type (the exception propagates unchanged).
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable

_lock = threading.Lock()
_metrics: dict[str, Any] | None = None
_REGISTRY = None

# Embedding one query takes ~5-30 ms on a laptop CPU, a passage batch up to seconds; updates take
# seconds to minutes. Buckets span those ranges.
EMBED_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
UPDATE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


def registry():
    """The process-wide ``CollectorRegistry`` holding these metrics (created on first use)."""
    _get()
    return _REGISTRY


def _get() -> dict[str, Any]:
    global _metrics, _REGISTRY
    if _metrics is not None:
        return _metrics
    with _lock:
        if _metrics is None:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

            reg = CollectorRegistry(auto_describe=True)
            m: dict[str, Any] = {
                "embed_seconds": Histogram(
                    "qiao_embedding_seconds", "Time the embedding model took per call (after the cache)",
                    ["kind"], buckets=EMBED_BUCKETS, registry=reg,
                ),
                "embed_texts": Counter("qiao_embedded_texts", "Texts embedded by the model", ["kind"], registry=reg),
                "cache_hits": Counter("qiao_embedding_cache_hits", "Embedding lookups answered by the cache", ["kind"], registry=reg),
                "cache_misses": Counter("qiao_embedding_cache_misses", "Embedding lookups sent to the model", ["kind"], registry=reg),
                "queue_wait": Histogram(
                    "qiao_embedding_queue_wait_seconds", "Time an embedding request waited for a worker",
                    buckets=WAIT_BUCKETS, registry=reg,
                ),
                "update_seconds": Histogram(
                    "qiao_update_duration_seconds", "Duration of index updates (add, remove, reindex), failed ones included",
                    ["action"], buckets=UPDATE_BUCKETS, registry=reg,
                ),
                "update_failures": Counter(
                    "qiao_update_failures", "Index updates that failed (nothing was changed)", ["action", "error"], registry=reg,
                ),
            }
            ratio = Gauge(
                "qiao_embedding_cache_hit_ratio", "Embedding-cache hits / lookups since the process started", ["kind"], registry=reg
            )
            for kind in ("query", "passage"):
                m["cache_hits"].labels(kind), m["cache_misses"].labels(kind)
                m["embed_seconds"].labels(kind)
                m["embed_texts"].labels(kind)
                ratio.labels(kind).set_function(functools.partial(_ratio, kind))
            _REGISTRY = reg
            _metrics = m
    return _metrics


_cache_counts: dict[str, list[int]] = {"query": [0, 0], "passage": [0, 0]}  # kind -> [hits, misses]


def _ratio(kind: str) -> float:
    hits, misses = _cache_counts.get(kind, (0, 0))
    return hits / (hits + misses) if hits + misses else 0.0


def observe_embedding(kind: str, texts: int, seconds: float) -> None:
    m = _get()
    m["embed_seconds"].labels(kind).observe(seconds)
    m["embed_texts"].labels(kind).inc(texts)


def observe_embedding_cache(kind: str, hits: int, misses: int) -> None:
    m = _get()
    with _lock:
        counts = _cache_counts.setdefault(kind, [0, 0])
        counts[0] += hits
        counts[1] += misses
    if hits:
        m["cache_hits"].labels(kind).inc(hits)
    if misses:
        m["cache_misses"].labels(kind).inc(misses)


def observe_queue_wait(seconds: float) -> None:
    _get()["queue_wait"].observe(seconds)


def observe_update(action: str, seconds: float, error: str | None = None) -> None:
    m = _get()
    m["update_seconds"].labels(action).observe(seconds)
    if error is not None:
        m["update_failures"].labels(action, error).inc()


def timed_update(action: str) -> Callable:
    """Decorator for an index update method: duration always, a failure when it raises."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                observe_update(action, time.perf_counter() - t0, type(exc).__name__)
                raise
            observe_update(action, time.perf_counter() - t0)
            return result

        return inner

    return wrap
