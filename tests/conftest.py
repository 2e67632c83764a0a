"""Shared fixtures: one real index over the seed corpus, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the request time budget (default 8 s) is tested on its own (tests/integration/test_hardening_load.py); elsewhere a
# cold /ask on a busy CI machine must not turn into a 503
os.environ.setdefault("QIAO_REQUEST_TIMEOUT_S", "120")
# likewise the heavy lane's wait (tests/integration/test_admission.py): a test sending long inputs one after the
# other waits for the lane's duty-cycle pause (cold first requests cost seconds of CPU) instead of getting a 429
os.environ.setdefault("QIAO_HEAVY_WAIT_S", "120")

from qiao.service.core import QiaoService, collect_documents  # noqa: E402
from qiao.settings import PROJECT_ROOT, Settings  # noqa: E402

SEED_DIR = PROJECT_ROOT / "corpus" / "documents"


def seed_path(prefix: str) -> Path:
    """The seed document whose file name starts with ``prefix`` (e.g. "004")."""
    return next(SEED_DIR.glob(f"{prefix}_*.txt"))


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory) -> Path:
    """One embedding cache for the whole session, so each seed passage is embedded once."""
    return tmp_path_factory.mktemp("embcache")


def make_settings(data_dir: Path, **kw) -> Settings:
    return Settings(data_dir=data_dir, **kw)


BACKENDS = ("faiss", "milvus")
"""Search backends every retrieval and answer test runs on (QIAO_BACKEND; milvus = embedded milvus-lite)."""


@pytest.fixture(scope="session")
def seed_service_of(tmp_path_factory, shared_cache_dir):
    """``seed_service_of(backend)``: the seed index served by that backend (each built once per session)."""
    services: dict[str, QiaoService] = {}

    def get(backend: str = "faiss") -> QiaoService:
        if backend not in services:
            data = tmp_path_factory.mktemp("seed-index" if backend == "faiss" else f"seed-index-{backend}")
            settings = make_settings(data, backend=backend)
            service = QiaoService(settings)
            _share_cache(service, shared_cache_dir)
            service.build(collect_documents(settings).documents, progress=False)
            services[backend] = service
        return services[backend]

    return get


@pytest.fixture(scope="session")
def seed_service(seed_service_of) -> QiaoService:
    return seed_service_of("faiss")


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> str:
    """Parametrises a test over the search backends."""
    return request.param


@pytest.fixture(scope="session")
def backend_seed_service(backend, seed_service_of) -> QiaoService:
    """The seed index on each backend in turn. A test module runs on both by overriding
    ``seed_service`` with it (modules that use ``seed_server`` override only their own fixtures)."""
    return seed_service_of(backend)


def _share_cache(service: QiaoService, cache_dir: Path) -> None:
    from qiao.index.embedders import EmbeddingCache

    service.embedder.cache = EmbeddingCache(cache_dir / "embeddings.sqlite")
    if service.embedder.second is not None:  # the second embedder (index/use_embedder.py) shares it too
        service.embedder.second.cache = service.embedder.cache


@pytest.fixture(scope="session")
def seed_docs():
    settings = Settings()
    return {d.source[:3]: d for d in collect_documents(settings).documents}


@pytest.fixture()
def fresh_service(tmp_path, shared_cache_dir):
    """A service with its own empty data dir (sharing the embedding cache)."""

    def make(**kw) -> QiaoService:
        s = QiaoService(make_settings(tmp_path / "data", **kw))
        _share_cache(s, shared_cache_dir)
        return s

    return make


@pytest.fixture(scope="session")
def seed_server(seed_service):
    """The real server over the seed index on a free loopback port (one for the whole session)."""
    from support import LiveServer

    with LiveServer(seed_service) as server:
        yield server
