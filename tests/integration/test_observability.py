"""Operators' view: ``/metrics`` (parsed with prometheus_client's own parser after real requests),
JSON request log lines and ``X-Request-ID`` (read from a real ``qiao serve`` process's stdout)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qiao.api.logging_mw import LOGGER_NAME, JsonFormatter
from qiao.service.core import UnknownDocumentError
from qiao.settings import PROJECT_ROOT
from support import free_port


def scrape(url: str) -> dict[str, dict]:
    """name -> {"type": ..., "samples": [(sample_name, labels, value), ...]}"""
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        f.name: {"type": f.type, "samples": [(s.name, s.labels, s.value) for s in f.samples]}
        for f in text_string_to_metric_families(r.text)
    }


def value(families, family: str, sample: str, **labels) -> float:
    for name, lab, v in families[family]["samples"]:
        if name == sample and all(lab.get(k) == str(want) for k, want in labels.items()):
            return v
    return 0.0


def test_metrics_after_real_requests(seed_server, seed_service):
    url = seed_server.url
    before = scrape(url)
    marker = uuid.uuid4().hex[:8]  # a query never embedded before: the embedder must run
    for _ in range(3):
        assert httpx.post(url + "/search", json={"query": f"stem cell {marker}", "k": 3}).status_code == 200
    assert httpx.post(url + "/search", json={"query": "", "k": 3}).status_code == 422
    doc_id = next(iter(seed_service.snapshot.index.documents))
    assert httpx.get(f"{url}/documents/{doc_id}").status_code == 200
    assert httpx.get(url + "/no/such/path").status_code == 404
    after = scrape(url)

    hist = after["qiao_http_request_duration_seconds"]
    assert hist["type"] == "histogram"
    post_ok = dict(method="POST", route="/search", status=200)
    assert value(after, "qiao_http_request_duration_seconds", "qiao_http_request_duration_seconds_count", **post_ok) - value(
        before, "qiao_http_request_duration_seconds", "qiao_http_request_duration_seconds_count", **post_ok
    ) == 3
    assert value(after, "qiao_http_request_duration_seconds", "qiao_http_request_duration_seconds_sum", **post_ok) > 0
    buckets = [(lab["le"], v) for n, lab, v in hist["samples"] if n.endswith("_bucket") and lab["route"] == "/search" and lab["status"] == "200"]
    assert buckets[-1][0] == "+Inf" and [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    requests = after["qiao_http_requests"]
    assert requests["type"] == "counter"
    for labels, n in [
        (dict(method="POST", route="/search", status=422), 1),
        (dict(method="GET", route="/documents/{doc_id}", status=200), 1),  # the template, not the raw path
        (dict(method="GET", route="<unmatched>", status=404), 1),
    ]:
        assert value(after, "qiao_http_requests", "qiao_http_requests_total", **labels) - value(
            before, "qiao_http_requests", "qiao_http_requests_total", **labels
        ) == n, labels
    assert not any(doc_id in lab.get("route", "") for _, lab, _ in requests["samples"])

    # index gauges: the serving snapshot
    snap = seed_service.snapshot
    assert after["qiao_index_chunks"]["type"] == "gauge"
    assert value(after, "qiao_index_chunks", "qiao_index_chunks") == snap.index.size
    assert value(after, "qiao_index_documents", "qiao_index_documents") == len(snap.index.documents)
    assert value(after, "qiao_index_loaded", "qiao_index_loaded") == 1

    # embedding: the new query was embedded once (a miss), then answered twice from the cache
    emb = "qiao_embedding_seconds_count"
    assert value(after, "qiao_embedding_seconds", emb, kind="query") - value(before, "qiao_embedding_seconds", emb, kind="query") >= 1
    hits = value(after, "qiao_embedding_cache_hits", "qiao_embedding_cache_hits_total", kind="query") - value(
        before, "qiao_embedding_cache_hits", "qiao_embedding_cache_hits_total", kind="query"
    )
    assert hits >= 2
    ratio = value(after, "qiao_embedding_cache_hit_ratio", "qiao_embedding_cache_hit_ratio", kind="query")
    assert 0 < ratio < 1 and after["qiao_embedding_cache_hit_ratio"]["type"] == "gauge"
    assert after["qiao_embedding_queue_wait_seconds"]["type"] == "histogram"
    assert "process_resident_memory_bytes" in after


def test_update_durations_and_failures_are_counted(seed_server, fresh_service, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Tianjin supports stem cell clinical research.\n", encoding="utf-8")
    service = fresh_service(corpus_dir=corpus)
    before = scrape(seed_server.url)  # the update metrics are process-wide: any app of this process shows them
    service.reindex()
    service.add_documents([("b.md", "# Beijing\n\nBeijing funds gene therapy trials.\n".encode())])
    with pytest.raises(UnknownDocumentError):
        service.remove_document("nope")
    after = scrape(seed_server.url)
    d = lambda fam, s, **lab: value(after, fam, s, **lab) - value(before, fam, s, **lab)  # noqa: E731
    assert d("qiao_update_duration_seconds", "qiao_update_duration_seconds_count", action="reindex") == 1
    assert d("qiao_update_duration_seconds", "qiao_update_duration_seconds_count", action="add") == 1
    assert d("qiao_update_duration_seconds", "qiao_update_duration_seconds_count", action="remove") == 1
    assert d("qiao_update_failures", "qiao_update_failures_total", action="remove", error="UnknownDocumentError") == 1
    assert d("qiao_update_failures", "qiao_update_failures_total", action="add", error="UnknownDocumentError") == 0
    assert d("qiao_embedding_cache_misses", "qiao_embedding_cache_misses_total", kind="passage") >= 1


def test_log_lines_without_query_text_by_default(seed_server):
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record):
            records.append(JsonFormatter().format(record))

    logger = logging.getLogger(LOGGER_NAME)
    handler = Capture()
    logger.addHandler(handler)
    try:
        r = httpx.post(seed_server.url + "/search", json={"query": "secret personal query", "k": 1}, headers={"X-Request-ID": "trace-42"})
        # the server thread writes the line once the response has gone out: wait for it (bounded), not a race
        deadline = time.monotonic() + 10
        while not any('"trace-42"' in x for x in records) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        logger.removeHandler(handler)
    assert r.headers["x-request-id"] == "trace-42"
    lines = [json.loads(x) for x in records]
    line = next(x for x in lines if x["request_id"] == "trace-42")
    assert line["route"] == "/search" and line["status"] == 200 and "query" not in line
    assert "secret" not in "".join(records)


def test_json_request_logs_of_a_real_server(seed_service):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "QIAO_LOG_QUERIES": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qiao.api.cli", "--data-dir", str(seed_service.settings.data_dir), "serve", "--port", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, "server did not start"
            time.sleep(0.3)
        client = httpx.Client(timeout=300)  # the first query loads the model; the first question warms the QA caches
        r1 = client.post(url + "/search", json={"query": "天津 细胞治疗", "k": 2}, headers={"X-Request-ID": "abc-123"})
        r2 = client.post(url + "/ask", json={"question": "which regions allow stem cell clinical trials"}, headers={"X-Request-ID": "bad id!"})
        r3 = client.get(url + "/documents/nope")
        r4 = client.post(url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                        headers={"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"})
        assert r1.headers["x-request-id"] == "abc-123"
        rid2 = r2.headers["x-request-id"]
        assert rid2 != "bad id!" and len(rid2) == 32 and int(rid2, 16) >= 0  # an unsafe id is replaced by a uuid4
        assert r3.status_code == 404 and len(r3.headers["x-request-id"]) == 32
        assert r4.status_code == 200 and {t["name"] for t in r4.json()["result"]["tools"]} == {"search", "ask"}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    by_id = {x["request_id"]: x for x in lines}
    assert all(x["event"] == "request" and isinstance(x["took_ms"], float) for x in lines)
    search = by_id["abc-123"]
    assert (search["method"], search["route"], search["status"], search["query"]) == ("POST", "/search", 200, "天津 细胞治疗")
    ask = by_id[rid2]
    assert ask["route"] == "/ask" and ask["query"] == "which regions allow stem cell clinical trials" and ask["level"] == "info"
    miss = by_id[r3.headers["x-request-id"]]
    assert (miss["route"], miss["path"], miss["status"], miss["level"]) == ("/documents/{doc_id}", "/documents/nope", 404, "warning")
    assert by_id[r4.headers["x-request-id"]]["route"] == "/mcp"
    # one line per request: no uvicorn access lines duplicating them
    assert not [x for x in out.splitlines() if '"POST /search' in x]
