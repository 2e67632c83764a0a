"""Shared fixtures: one real index over the seed corpus, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the request time budget (default 10 s) is tested on its own (tests/test_hardening_load.py); elsewhere a
# cold /ask on a busy CI machine must not turn into a 503
os.environ.setdefault("QIAO_REQUEST_TIMEOUT_S", "120")

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


@pytest.fixture(scope="session")
def seed_service(tmp_path_factory, shared_cache_dir) -> QiaoService:
    data = tmp_path_factory.mktemp("seed-index")
    settings = make_settings(data)
    service = QiaoService(settings)
    _share_cache(service, shared_cache_dir)
    docs = collect_documents(settings).documents
    service.build(docs, progress=False)
    return service


def _share_cache(service: QiaoService, cache_dir: Path) -> None:
    from qiao.index.embedders import EmbeddingCache

    service.embedder.cache = EmbeddingCache(cache_dir / "embeddings.sqlite")


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
