"""Issue 17, HTTP findings: the chat ReDoS (2), the question limit through chat history (3), body size
limits (8) and a 413 that reaches clients which send the whole body first (12).

Real server on a loopback port where the transport matters (urllib / requests / a blocked event
loop), TestClient elsewhere.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import httpx
import pytest
import requests
from fastapi.testclient import TestClient

from qiao.api.app import create_app
from qiao.service import followup
from qiao.service.core import QiaoService
from qiao.service.followup import MAX_FOLLOW_UP_CHARS, carry_over, follow_up_rest, resolve_question

WRITE = {"X-Qiao-Request": "1"}
REDOS_CHAT = {  # the 180 KB body: 60,000 "。" then "x" between a question and a follow-up
    "model": "qiao",
    "messages": [
        {"role": "user", "content": "Which regions support stem cell clinical research?"},
        {"role": "user", "content": "。" * 60000 + "x"},
        {"role": "user", "content": "and in Beijing?"},
    ],
}


def variant(seed_service, **settings) -> QiaoService:
    """A service over the seed index (shared, read-only) with some settings changed."""
    s = QiaoService(seed_service.settings.model_copy(update=settings))
    s._embedder = seed_service.embedder
    s._snapshot = seed_service.snapshot
    return s


@pytest.fixture(scope="module")
def tc(seed_service):
    with TestClient(create_app(seed_service.settings, seed_service)) as c:
        yield c


def _within(seconds: float, fn, *args):
    """``fn(*args)`` finished within ``seconds`` (run in a daemon thread, so a runaway call cannot hang the suite)."""
    box = {}

    def run():
        box["result"] = fn(*args)

    t = threading.Thread(target=run, daemon=True)
    t0 = time.perf_counter()
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn.__name__} on {sum(len(a) for a in args if isinstance(a, str))} characters took over {seconds} s"
    return box["result"], time.perf_counter() - t0


# --- finding 2: follow-up resolution in linear time -----------------------------------------------------

HOSTILE = [
    "。" * 200_000 + "x",  # the input: every start position re-scanned the run of punctuation
    "？" * 200_000 + "呢x",
    " " * 200_000 + "呢" + "?" * 10 + "a",
    "and " * 50_000,
    "那" + "，" * 200_000 + "x",
    "呢。" * 100_000 + "x",
    "\u3000" * 200_000 + "怎么",
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_follow_up_resolution_is_fast_on_200k_hostile_characters(text):
    _, dt = _within(2.0, follow_up_rest, text)
    _, dt2 = _within(2.0, carry_over, text, "Beijing")
    _, dt3 = _within(2.0, resolve_question, ["When did Tianjin approve the pilot?", text, "and in Beijing?"])
    _, dt4 = _within(2.0, resolve_question, [text, "那北京呢？"])
    assert max(dt, dt2, dt3, dt4) < 2.0


def test_follow_up_length_bound_is_checked_before_any_scan(monkeypatch):
    """Longer than a follow-up can be: None, without any scanning helper (or regex) looking at the text."""

    def boom(*a, **kw):
        raise AssertionError("scanned a text longer than MAX_FOLLOW_UP_CHARS")

    for name in ("_en_opening_end", "_zh_opening_end", "_without_zh_tail", "_strip_end", "cjk_count"):
        monkeypatch.setattr(followup, name, boom)
    assert follow_up_rest("and " + "x" * MAX_FOLLOW_UP_CHARS + "?") is None
    assert follow_up_rest("那" + "。" * (MAX_FOLLOW_UP_CHARS + 5) + "呢") is None
    assert not hasattr(followup, "re")  # no regular expression in the module at all


def test_follow_ups_still_resolve():
    assert follow_up_rest("And   what about Hainan?") == "Hainan"
    assert follow_up_rest("android phones?") is None
    assert follow_up_rest("那如果是上海呢？") == "上海"
    assert follow_up_rest("那些地区呢？") == "那些地区"  # a bare "X呢": 那些 is not the opening 那
    assert resolve_question(["北京市支持干细胞临床研究的政策有哪些？", "那上海呢？"]) == "上海支持干细胞临床研究的政策有哪些？"
    assert resolve_question(["Which regions support stem cell clinical research?", "and in 2023?"]) == (
        "Which regions support stem cell clinical research in 2023?"
    )


def test_health_answers_within_a_second_while_hostile_chats_run(seed_server):
    """The ReDoS body and a costly (2,000-character) chat question run while /health is polled."""
    url = seed_server.url
    long_question = {"model": "qiao", "messages": [{"role": "user", "content": "细胞治疗临床研究政策" * 200}]}
    results: dict[str, httpx.Response] = {}

    def post(name, body):
        results[name] = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)

    threads = [threading.Thread(target=post, args=("redos", REDOS_CHAT)), threading.Thread(target=post, args=("long", long_question))]
    for t in threads:
        t.start()
    waits = []
    with httpx.Client(timeout=5) as c:
        while any(t.is_alive() for t in threads) or len(waits) < 5:
            t0 = time.perf_counter()
            assert c.get(f"{url}/health").status_code == 200
            waits.append(time.perf_counter() - t0)
            time.sleep(0.1)
    for t in threads:
        t.join()
    assert max(waits) < 1.0, f"/health took up to {max(waits):.2f} s while chat requests ran: {[round(w, 2) for w in waits]}"
    assert results["redos"].status_code == 413 and results["redos"].json()["error"]["code"] == "context_length_exceeded"
    assert results["long"].status_code == 200, results["long"].text


# --- finding 3: the question limit cannot be bypassed through chat history --------------------------


def test_chat_history_cannot_make_a_question_longer_than_the_limit(tc):
    body = {"model": "qiao", "messages": [{"role": "user", "content": "天津细胞治疗政策" * 1250}, {"role": "user", "content": "那北京呢？"}]}
    t0 = time.perf_counter()
    r = tc.post("/v1/chat/completions", json=body)
    assert time.perf_counter() - t0 < 5
    assert r.status_code == 422, r.text[:300]
    err = r.json()["error"]
    assert err["code"] == "string_above_max_length" and err["param"] == "messages[1].content"
    assert "10000 characters" in err["message"] and "2000" in err["message"] and "QIAO_MAX_QUERY_CHARS" in err["message"]
    assert len(r.content) < 1000  # the question is not echoed


def test_chat_size_and_message_count_limits_come_from_settings(seed_service):
    service = variant(seed_service, max_chat_chars=1000, max_chat_messages=5)
    u = {"role": "user", "content": "Which regions support stem cell clinical research?"}
    with TestClient(create_app(service.settings, service)) as c:
        r = c.post("/v1/chat/completions", json={"messages": [u] * 6})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_messages"
        assert "6 messages" in r.json()["error"]["message"] and "QIAO_MAX_CHAT_MESSAGES" in r.json()["error"]["message"]
        history = [{"role": "system", "content": "x" * 600}, {"role": "assistant", "content": "y" * 500}, u]
        r = c.post("/v1/chat/completions", json={"messages": history})
        assert r.status_code == 413
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and err["param"] == "messages[1].content" and "QIAO_MAX_CHAT_CHARS" in err["message"]
        r = c.post("/v1/chat/completions", json={"messages": [u, {"role": "assistant", "content": "y" * 500}, {"role": "user", "content": "and in Beijing?"}]})
        assert r.status_code == 200 and r.json()["question"] == "Which regions support stem cell clinical research in Beijing?"


def test_query_limit_is_the_setting_for_search_ask_and_chat(seed_service):
    small = variant(seed_service, max_query_chars=40)
    with TestClient(create_app(small.settings, small)) as c:
        q = "which regions support stem cell research x"  # 42 characters
        for path, body in (("/search", {"query": q}), ("/ask", {"question": q})):
            r = c.post(path, json=body)
            assert r.status_code == 422, (path, r.text)
            assert "42 characters" in r.text and "limit is 40" in r.text and q not in r.text
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": q}]})
        assert r.status_code == 400 and "limit is 40" in r.json()["error"]["message"]
        assert c.post("/search", json={"query": q[:40]}).status_code == 200
    large = variant(seed_service, max_query_chars=3000)
    with TestClient(create_app(large.settings, large)) as c:
        q = ("stem cell clinical research policy in Tianjin " * 60)[:2500]
        r = c.post("/search", json={"query": q, "mode": "bm25", "k": 3})
        assert r.status_code == 200, r.text[:300]
        r = c.post("/ask", json={"question": q[:2100], "k": 3})
        assert r.status_code == 200, r.text[:300]


# --- finding 8: body size limit ---------------------------------------------------------------------------


def test_json_bodies_over_the_limit_are_a_short_413(seed_service):
    service = variant(seed_service, max_body_bytes=64 * 1024)
    pad = "x" * (100 * 1024)
    with TestClient(create_app(service.settings, service)) as c:
        for path, body in (("/search", {"query": "stem cell", "pad": pad}), ("/ask", {"question": "stem cell", "pad": pad})):
            r = c.post(path, json=body)
            assert r.status_code == 413, (path, r.status_code)
            assert "65536 bytes" in r.json()["detail"] and "QIAO_MAX_BODY_BYTES" in r.json()["detail"] and len(r.content) < 300
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "stem cell"}], "pad": pad})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunked():  # no Content-Length: counted as it streams, cut off at the limit
            yield b'{"query": "stem cell", "pad": "'
            for _ in range(100):
                yield b"y" * 4096
            yield b'"}'

        r = c.post("/search", content=chunked(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "more than 65536 bytes" in r.json()["detail"]
        r = c.post("/v1/chat/completions", content=chunked(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        # under the limit nothing changes
        assert c.post("/search", json={"query": "stem cell " + "y" * 1000, "mode": "bm25"}).status_code == 200


# --- finding 12: the 413 reaches clients that send the whole body first ----------------------------------


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "qiaoboundary7d93"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\nContent-Type: text/plain\r\n\r\n'
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_urllib_gets_the_413_for_a_21_mb_upload(seed_server, seed_service):
    body, ctype = _multipart("big.txt", b"stem cell policy\n" * (21 * 1024 * 1024 // 17))
    assert len(body) > 21 * 1024 * 1024
    req = urllib.request.Request(f"{seed_server.url}/documents", data=body, method="POST", headers={"Content-Type": ctype, **WRITE})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=60)
    assert info.value.code == 413
    detail = json.loads(info.value.read())["detail"]
    assert "QIAO_MAX_UPLOAD_BYTES" in detail and "20.0 MB" in detail
    assert httpx.get(f"{seed_server.url}/health").json()["documents"] == len(seed_service.snapshot.index.documents)


def test_requests_gets_the_413_for_a_large_json_body_and_other_early_answers(seed_server):
    url = seed_server.url
    r = requests.post(f"{url}/search", data=json.dumps({"query": "stem cell", "pad": "x" * 3_500_000}), headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "QIAO_MAX_BODY_BYTES" in r.json()["detail"]
    # an early answer that is not about size (a write without the header) is received as well
    body, ctype = _multipart("a.txt", b"stem cell policy\n" * 300_000)
    r = requests.post(f"{url}/documents", data=body, headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code == 403 and "X-Qiao-Request" in r.json()["detail"]
    # and the connection is still good for the next request
    with requests.Session() as s:
        assert s.post(f"{url}/search", data=b"{" + b" " * 2_000_000 + b"}", headers={"Content-Type": "application/json"}, timeout=60).status_code == 413
        assert s.post(f"{url}/search", json={"query": "stem cell", "k": 1}, timeout=60).status_code == 200
