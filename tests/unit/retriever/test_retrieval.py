"""Retrieval quality on the seed corpus, in all three modes, with filters."""

from __future__ import annotations

import pytest

from qiao.retriever.models import Filters


@pytest.fixture(scope="module")
def seed_service(backend_seed_service):
    """Every test here runs on each search backend (FAISS + bm25s, Milvus): tests/conftest.py."""
    return backend_seed_service


def _search(service, q, **kw):
    return service.snapshot.retriever.search(q, **kw)


def test_regions_question_spans_documents(seed_service):
    hits = _search(seed_service, "which regions allow stem cell clinical trials", k=10, mode="hybrid")
    sources = {h.chunk.source[:3] for h in hits}
    assert len(sources) >= 3, sources
    assert "004" in sources


def test_simplified_query_finds_traditional_tianjin_entry(seed_service):
    hits = _search(seed_service, "天津 细胞治疗 先行先试", k=5, mode="hybrid")
    top = hits[0].chunk
    assert top.source.startswith("002") or (top.source.startswith("004") and "Tianjin" in top.regions), top


@pytest.mark.parametrize("mode", ["vector", "hybrid"])
def test_english_query_finds_chinese_tianjin_entry(seed_service, mode):
    q = "report on piloting cell therapy first in the Tianjin free trade zone submitted to the Ministry of Commerce"
    hits = _search(seed_service, q, k=5, mode=mode)
    assert any(h.chunk.source.startswith("004") and h.chunk.date == "2021-04-12" for h in hits), [
        (h.chunk.source, h.chunk.date) for h in hits
    ]


def test_hits_carry_exact_offsets_and_retriever_ranks(seed_service):
    idx = seed_service.snapshot.index
    hits = _search(seed_service, "Boao Lecheng stem cell", k=10)
    assert hits and [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert any(h.bm25_rank is not None for h in hits) and any(h.vector_rank is not None for h in hits)
    for h in hits:
        doc = idx.documents[h.chunk.doc_id]
        span = doc.text[h.chunk.start : h.chunk.end]
        assert span.strip()
        # the chunk's (cleaned) words all come from its span
        assert h.chunk.text.split()[0] in span and h.chunk.text.split()[-1] in span


def test_bm25_mode_scores_and_order(seed_service):
    hits = _search(seed_service, "Shenzhen regulations cell gene industry", k=5, mode="bm25")
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert all(h.vector_score is None for h in hits)
    assert any("Shenzhen" in h.chunk.regions for h in hits[:3])


def test_filters(seed_service):
    q = "stem cell clinical research"
    zh = _search(seed_service, q, k=10, filters=Filters(lang=("zh",)))
    assert zh and all(h.chunk.lang == "zh" for h in zh)
    tj = _search(seed_service, q, k=10, filters=Filters(region=("Tianjin",)))
    assert tj and all("Tianjin" in h.chunk.regions for h in tj)
    dated = _search(seed_service, q, k=10, filters=Filters(date_from="2023-01-01", date_to="2023-06-30"))
    assert dated and all("2023-01-01" <= h.chunk.date <= "2023-06-30" for h in dated)
    one = next(iter(seed_service.snapshot.index.documents))
    only = _search(seed_service, q, k=10, filters=Filters(doc_id=(one,)))
    assert only and all(h.chunk.doc_id == one for h in only)
    none = _search(seed_service, q, k=10, filters=Filters(region=("Tibet",)))
    assert none == []


def test_no_near_duplicates(seed_service):
    hits = _search(seed_service, "cell and gene therapy products clinical trials", k=20)
    texts = [h.chunk.text for h in hits]
    assert len(texts) == len(set(texts))
    for i, a in enumerate(hits):
        for b in hits[i + 1 :]:
            if a.chunk.doc_id == b.chunk.doc_id:
                overlap = min(a.chunk.end, b.chunk.end) - max(a.chunk.start, b.chunk.start)
                assert overlap < 0.5 * min(a.chunk.end - a.chunk.start, b.chunk.end - b.chunk.start)
