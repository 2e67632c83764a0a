"""Managing documents: upload / delete / reindex over HTTP and the CLI; atomic, incremental updates;
the bearer key, the size limit and every kind of bad file."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

import qiao.service.core as service_mod
from qiao.api.app import create_app
from qiao.service.core import UpdateError, collect_documents
from qiao.corpus.extract import extract
from qiao.corpus.loader import DocumentError
from qiao.index.store import current_build
from support import free_port, inject_build_failure

NEW_DOC = (
    "Zhejiang pilot on porcine kidney xenotransplantation\n"
    "Release Date: 2024-06-01\n\n"
    "The Zhejiang Provincial Health Commission approved a pilot programme for porcine kidney "
    "xenotransplantation research at three hospitals in Hangzhou. Each hospital must register the "
    "programme with the provincial ethics committee before enrolling patients.\n"
)
NEW_QUERY = "porcine kidney xenotransplantation Hangzhou"

WRITE = {"X-Qiao-Request": "1"}  # writes are refused without it (api/origin.py)


# --- helpers -------------------------------------------------------------------------------


def make_pdf(lines: list[str], title: str | None = None) -> bytes:
    """A minimal one-page PDF (Helvetica) whose text pypdf can extract; no lines -> no text at all."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = "BT /F1 12 Tf 14 TL 72 720 Td " + " ".join(f"({esc(line)}) Tj T*" for line in lines) + " ET" if lines else ""
    stream = ops.encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    if title:
        objects.append(b"<< /Title (" + esc(title).encode("latin-1") + b") >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    info = f" /Info {len(objects)} 0 R" if title else ""
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def upload(client, name: str, data: bytes, headers: dict | None = None, content_type: str = "application/octet-stream"):
    return client.post("/documents", files=[("files", (name, data, content_type))], headers=headers or {})


def search_sources(client, query: str, k: int = 3) -> list[str]:
    r = client.post("/search", json={"query": query, "k": k})
    assert r.status_code == 200, r.text
    return [h["source"] for h in r.json()["hits"]]


def store_files(service) -> list[str]:
    root = service.store.root
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


@pytest.fixture()
def built(fresh_service):
    """A service over the seed corpus in its own data dir (embeddings come from the shared cache)."""

    def make(**kw):
        service = fresh_service(**kw)
        service.build(collect_documents(service.settings).documents, progress=False)
        return service

    return make


@pytest.fixture()
def client(built):
    service = built()
    with TestClient(create_app(service.settings, service), headers={"X-Qiao-Request": "1"}) as c:
        c.service = service
        yield c


# --- the lifecycle --------------------------------------------------------------------------


def test_add_search_delete_gone(client):
    service = client.service
    before = client.get("/health").json()
    assert "zhejiang-pilot.txt" not in search_sources(client, NEW_QUERY)

    r = upload(client, "zhejiang-pilot.txt", NEW_DOC.encode("utf-8"), content_type="text/plain")
    assert r.status_code == 201, r.text
    body = r.json()
    [doc] = body["documents"]
    assert doc["source"] == "zhejiang-pilot.txt" and doc["date"] == "2024-06-01" and doc["lang"] == "en"
    assert doc["chunks"] >= 1 and body["total_documents"] == before["documents"] + 1
    assert body["total_chunks"] == before["chunks"] + doc["chunks"]
    # incremental: only the new document's passages were embedded, the rest came from the cache
    assert 1 <= body["embedded"] <= doc["chunks"]

    assert search_sources(client, NEW_QUERY)[0] == "zhejiang-pilot.txt"
    stored = client.get(f"/documents/{doc['doc_id']}").json()
    assert stored["text"] == NEW_DOC  # a .txt is stored byte for byte
    hit = client.post("/search", json={"query": NEW_QUERY, "k": 1}).json()["hits"][0]
    assert NEW_DOC[hit["start"] : hit["end"]].split()[0] == hit["text"].split()[0]
    # stored on disk: a new service over the same data dir sees it
    assert doc["doc_id"] in {d.doc_id for d in collect_documents(service.settings).documents}

    r = client.delete(f"/documents/{doc['doc_id']}")
    assert r.status_code == 200, r.text
    assert r.json()["documents"][0]["doc_id"] == doc["doc_id"] and r.json()["documents"][0]["chunks"] == doc["chunks"]
    assert "zhejiang-pilot.txt" not in search_sources(client, NEW_QUERY)
    assert client.get(f"/documents/{doc['doc_id']}").status_code == 404
    after = client.get("/health").json()
    assert (after["documents"], after["chunks"]) == (before["documents"], before["chunks"])
    assert [n for n in store_files(service) if not n.startswith(".")] == []  # text and metadata removed
    assert client.delete(f"/documents/{doc['doc_id']}").status_code == 404


def test_reupload_of_identical_content_is_409_and_changes_nothing(client):
    assert upload(client, "a.txt", NEW_DOC.encode()).status_code == 201
    build = client.get("/health").json()["build_id"]
    r = upload(client, "copy-of-a.txt", NEW_DOC.encode())
    assert r.status_code == 409
    assert "copy-of-a.txt" in r.json()["detail"] and "a.txt" in r.json()["detail"]
    assert client.get("/health").json()["build_id"] == build
    # the same text arriving as another format is the same document too
    html = f"<html><head><title>x</title></head><body><pre>{NEW_DOC}</pre></body></html>".encode()
    assert upload(client, "a.html", html).status_code in (201, 409)
    # two identical files in one upload
    other = NEW_DOC.replace("Zhejiang", "Jiangsu").encode()
    r = client.post("/documents", files=[("files", ("j1.txt", other, "text/plain")), ("files", ("j2.txt", other, "text/plain"))])
    assert r.status_code == 409 and "j2.txt" in r.json()["detail"]


def test_seed_document_deleted_stays_deleted_across_restarts(client):
    service = client.service
    seed = next(d for d in service.snapshot.index.documents.values() if d.source.startswith("002"))
    assert client.delete(f"/documents/{seed.doc_id}").status_code == 200
    assert seed.doc_id not in {d["doc_id"] for d in client.get("/documents").json()["documents"]}
    # a restart (a new service on the same data dir) and a full reindex keep it deleted
    again = service_mod.QiaoService(service.settings)
    again._embedder = service.embedder
    assert seed.doc_id not in {d.doc_id for d in collect_documents(again.settings).documents}
    report = again.reindex()
    assert seed.doc_id not in again.snapshot.index.documents and report.total_documents == 4
    assert "deleted.json" in store_files(service)
    # uploading the same file again brings it back
    data = (Path(service.settings.corpus_dir) / seed.source).read_bytes()
    r = upload(client, seed.source, data)
    assert r.status_code == 201, r.text
    assert r.json()["documents"][0]["doc_id"] == seed.doc_id
    assert seed.doc_id in {d.doc_id for d in collect_documents(service.settings).documents}
    assert json.loads((service.store.root / "deleted.json").read_text()) == {}


def test_cannot_remove_the_last_document(fresh_service, tmp_path):
    corpus = tmp_path / "one"
    corpus.mkdir()
    (corpus / "only.txt").write_text(NEW_DOC, encoding="utf-8")
    service = fresh_service(corpus_dir=corpus)
    service.reindex()
    with TestClient(create_app(service.settings, service), headers={"X-Qiao-Request": "1"}) as c:
        doc_id = c.get("/documents").json()["documents"][0]["doc_id"]
        r = c.delete(f"/documents/{doc_id}")
        assert r.status_code == 409 and "at least one document" in r.json()["detail"]
        assert c.get("/health").json()["documents"] == 1


# --- formats -------------------------------------------------------------------------------------


def test_html_upload_stores_extracted_text_and_offsets_point_into_it(client):
    html = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Shaanxi stem cell notice</title>"
        "<meta name='date' content='2024-09-10'><script>var tracking = 'SECRET_SCRIPT_TEXT';</script>"
        "<style>body{color:red}</style></head><body><article><h1>Shaanxi stem cell notice</h1>"
        "<p>The Shaanxi Provincial Health Commission opened registration of stem cell clinical research "
        "institutions in Xi'an, covering mesenchymal stem cell trials for knee osteoarthritis.</p>"
        "<p>陕西省卫生健康委员会开放干细胞临床研究机构备案。</p></article></body></html>"
    ).encode("utf-8")
    r = upload(client, "shaanxi.html", html, content_type="text/html")
    assert r.status_code == 201, r.text
    doc = r.json()["documents"][0]
    assert doc["title"] == "Shaanxi stem cell notice" and doc["date"] == "2024-09-10"
    text = client.get(f"/documents/{doc['doc_id']}").json()["text"]
    assert "mesenchymal stem cell trials for knee osteoarthritis" in text and "陕西省卫生健康委员会" in text
    assert "SECRET_SCRIPT_TEXT" not in text and "<p>" not in text and "color:red" not in text
    hits = client.post("/search", json={"query": "Shaanxi mesenchymal knee osteoarthritis", "k": 1}).json()["hits"]
    assert hits[0]["doc_id"] == doc["doc_id"]
    span = client.get(f"/documents/{doc['doc_id']}", params={"start": hits[0]["start"], "end": hits[0]["end"]}).json()["span"]
    assert span["text"] == text[hits[0]["start"] : hits[0]["end"]]
    assert "osteoarthritis" in span["text"]


def test_pdf_upload_is_searchable(client):
    pdf = make_pdf(
        ["Guangxi notice on CAR-T cell therapy", "Release Date: 2024-11-05",
         "The Guangxi Zhuang Autonomous Region supports CAR-T cell therapy trials for lymphoma in Nanning."],
        title="Guangxi CAR-T notice",
    )
    ex = extract(pdf, "guangxi.pdf")
    assert ex.kind == "pdf" and "CAR-T cell therapy trials for lymphoma" in ex.text
    r = upload(client, "guangxi.pdf", pdf, content_type="application/pdf")
    assert r.status_code == 201, r.text
    doc = r.json()["documents"][0]
    assert doc["title"] == "Guangxi CAR-T notice" and doc["date"] == "2024-11-05"
    hits = client.post("/search", json={"query": "CAR-T lymphoma Nanning", "k": 1}).json()["hits"]
    assert hits[0]["source"] == "guangxi.pdf"
    stored = client.get(f"/documents/{doc['doc_id']}").json()["text"]
    assert stored == ex.text  # the extracted text is what is stored; offsets point into it
    assert "lymphoma" in stored[hits[0]["start"] : hits[0]["end"]]


def test_markdown_and_several_files_in_one_upload(client):
    md = "# Hubei gene therapy fund\n\nThe Hubei provincial government set up a gene therapy industry fund in Wuhan.\n"
    txt = "Sichuan cell bank\n\nChengdu will build a regional stem cell bank for umbilical cord cells.\n"
    r = client.post("/documents", files=[("files", ("hubei.md", md.encode(), "text/markdown")), ("files", ("sichuan.txt", txt.encode(), "text/plain"))])
    assert r.status_code == 201, r.text
    assert [d["source"] for d in r.json()["documents"]] == ["hubei.md", "sichuan.txt"]
    assert search_sources(client, "Wuhan gene therapy industry fund")[0] == "hubei.md"
    assert search_sources(client, "Chengdu umbilical cord stem cell bank")[0] == "sichuan.txt"


# --- bad input: 4xx naming the file, nothing changes ---------------------------------------------------


BAD_FILES = [
    ("tool.exe", b"MZ\x90\x00\x03\x00\x00\x00", 415, "unsupported file type '.exe'"),
    ("report.docx", b"PK\x03\x04 some zip", 415, "unsupported file type '.docx'"),
    ("README", b"plain text without an extension", 415, "no extension"),
    ("gbk.txt", "天津市支持干细胞临床研究".encode("gbk"), 422, "not valid UTF-8"),
    ("utf16.txt", "stem cell".encode("utf-16"), 422, "UTF-16"),
    ("image.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", 422, "binary"),
    ("controls.txt", bytes(range(1, 9)) * 50, 422, "binary"),
    ("empty.txt", b"", 422, "empty"),
    ("blank.md", b"   \n\n\t  \n", 422, "empty"),
    ("empty.html", b"<html><head><script>var a = 1;</script></head><body>  </body></html>", 422, "no text"),
    ("binary.html", b"\x00\x01\x02<html>", 422, "binary"),
    ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage", 422, "PDF"),
    ("fake.pdf", b"this is not a pdf at all", 422, "not a PDF"),
    ("blank.pdf", make_pdf([]), 422, "no extractable text"),
]


@pytest.mark.parametrize("name, data, status, needle", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_rejected_naming_it_and_nothing_changes(client, name, data, status, needle):
    service = client.service
    build = client.get("/health").json()["build_id"]
    docs = client.get("/documents").json()["documents"]
    r = upload(client, name, data)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail.startswith(name) and needle.lower() in detail.lower(), detail
    # a good file next to a bad one is not added either
    r2 = client.post("/documents", files=[("files", ("good.txt", NEW_DOC.encode(), "text/plain")), ("files", (name, data, "application/octet-stream"))])
    assert r2.status_code == status and name in r2.json()["detail"]
    assert client.get("/health").json()["build_id"] == build
    assert client.get("/documents").json()["documents"] == docs
    assert [n for n in store_files(service) if not n.startswith(".")] == []


def test_extract_errors_name_the_file():
    with pytest.raises(DocumentError) as e:
        extract(b"\xff\xfe\x00", "../../etc/weird\x07name.txt")
    assert e.value.source == "weirdname.txt"
    with pytest.raises(DocumentError, match="no file name"):
        extract(b"abc", "")


def test_request_shape_errors(client):
    r = client.post("/documents", json={"files": []})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = client.post("/documents", data={"note": "no file here"}, files=[("other", ("", b"", "text/plain"))])
    assert r.status_code in (400, 422)
    r = client.post("/documents", data={"note": "no file here"}, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 400


# --- size limit --------------------------------------------------------------------------------------


def test_upload_size_limit_is_413(built):
    service = built(max_upload_bytes=1000)
    with TestClient(create_app(service.settings, service), headers={"X-Qiao-Request": "1"}) as c:
        build = c.get("/health").json()["build_id"]
        big = ("Stem cell policy sentence number %d.\n" * 200 % tuple(range(200))).encode()
        assert len(big) > 1000
        r = upload(c, "big.txt", big)
        assert r.status_code == 413 and "1000 bytes" in r.json()["detail"]
        r = c.post("/documents", content=b"x" * (1000 + (1 << 20) + 10), headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
        # without Content-Length (chunked): the stream is cut off as soon as it passes the limit
        def chunks():
            yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"huge.txt\"\r\n\r\n"
            for _ in range(40):
                yield b"y" * 65536
            yield b"\r\n--b--\r\n"
        r = c.post("/documents", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
        assert upload(c, "small.txt", NEW_DOC.encode()[:900]).status_code == 201
        assert c.get("/health").json()["build_id"] != build
        assert [d["source"] for d in c.get("/documents").json()["documents"]].count("small.txt") == 1


# --- auth ----------------------------------------------------------------------------------------------


def test_write_endpoints_need_the_bearer_key_reads_do_not(built):
    service = built(api_key="s3cret-key")
    with TestClient(create_app(service.settings, service), headers={"X-Qiao-Request": "1"}) as c:
        r = upload(c, "a.txt", NEW_DOC.encode())
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert upload(c, "a.txt", NEW_DOC.encode(), headers={"Authorization": "Basic czNjcmV0"}).status_code == 401
        assert upload(c, "a.txt", NEW_DOC.encode(), headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert c.post("/reindex").status_code == 401
        assert c.post("/reindex", headers={"Authorization": "Bearer wrong"}).status_code == 403
        seed_id = c.get("/documents").json()["documents"][0]["doc_id"]
        assert c.delete(f"/documents/{seed_id}").status_code == 401
        assert c.delete(f"/documents/{seed_id}", headers={"Authorization": "Bearer nope"}).status_code == 403
        assert c.get("/health").json()["documents"] == 5  # nothing changed
        # reads stay open
        assert c.get("/documents").status_code == 200
        assert c.post("/search", json={"query": "stem cell"}).status_code == 200
        assert c.get(f"/documents/{seed_id}").status_code == 200
        assert c.get("/").status_code == 200
        ok = {"Authorization": "Bearer s3cret-key"}
        r = upload(c, "a.txt", NEW_DOC.encode(), headers=ok)
        assert r.status_code == 201
        assert c.post("/reindex", headers=ok).status_code == 200
        assert c.delete(f"/documents/{r.json()['documents'][0]['doc_id']}", headers=ok).status_code == 200


def test_no_key_configured_means_writes_are_open(client):
    assert client.service.settings.api_key is None
    assert client.post("/reindex").status_code == 200


# --- atomic updates --------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["embed", "write"])
def test_crash_mid_build_leaves_the_old_index_serving(client, monkeypatch, step):
    service = client.service
    before = client.get("/health").json()
    build_dir = current_build(service.settings.index_dir)
    inject_build_failure(monkeypatch, service, step)
    r = upload(client, "zhejiang.txt", NEW_DOC.encode())
    assert r.status_code == 500
    assert "rebuilding the index failed" in r.json()["detail"] and "unchanged" in r.json()["detail"]
    assert client.get("/health").json() == before
    assert current_build(service.settings.index_dir) == build_dir
    assert "zhejiang.txt" not in search_sources(client, NEW_QUERY)
    assert [n for n in store_files(service) if not n.startswith(".")] == []  # staged files discarded
    seed_id = client.get("/documents").json()["documents"][0]["doc_id"]
    assert client.delete(f"/documents/{seed_id}").status_code == 500
    assert client.post("/reindex").status_code == 500
    assert client.get("/health").json() == before
    assert "deleted.json" not in store_files(service)
    with pytest.raises(UpdateError):
        service.add_documents([("zhejiang.txt", NEW_DOC.encode())])
    # once the fault is gone the same update goes through, and cleans the half-written build
    monkeypatch.undo()
    assert upload(client, "zhejiang.txt", NEW_DOC.encode()).status_code == 201
    assert search_sources(client, NEW_QUERY)[0] == "zhejiang.txt"
    assert not [p for p in (service.settings.index_dir / "builds").iterdir() if p.name.startswith(".tmp-")]


def test_concurrent_searches_during_updates_all_succeed(built, monkeypatch):
    service = built()
    old_build = service.snapshot.index.manifest["build_id"]
    build_started = threading.Event()
    real_build = service_mod.build_index

    def slow_build(*args, **kw):  # every build takes >= 1.5 s, so the searches overlap it
        build_started.set()
        time.sleep(1.5)
        return real_build(*args, **kw)

    monkeypatch.setattr(service_mod, "build_index", slow_build)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service.settings, service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        while not server.started:
            time.sleep(0.05)
        results: list[tuple[int, list[str], float]] = []
        update: dict = {}

        def add():
            update["r"] = httpx.post(f"{base}/documents", files=[("files", ("zhejiang.txt", NEW_DOC.encode(), "text/plain"))], headers=WRITE, timeout=60)

        def searcher(i: int):
            with httpx.Client(base_url=base, timeout=60) as h:
                for j in range(6):
                    t = time.time()
                    r = h.post("/search", json={"query": [NEW_QUERY, "天津 细胞治疗", "Boao Lecheng catalog"][(i + j) % 3], "k": 3})
                    results.append((r.status_code, [x["source"] for x in r.json().get("hits", [])], t))
                    time.sleep(0.1)

        writer = threading.Thread(target=add)
        writer.start()
        assert build_started.wait(10)
        t_build = time.time()
        readers = [threading.Thread(target=searcher, args=(i,)) for i in range(4)]
        for t in readers:
            t.start()
        for t in readers:
            t.join()
        writer.join()
        assert update["r"].status_code == 201, update["r"].text
        assert len(results) == 24 and all(code == 200 for code, _, _ in results), results
        assert all(hits for _, hits, _ in results)
        # searches that started while the build was running were answered from the old index
        during = [srcs for _, srcs, t in results if t < t_build + 1.0]
        assert during and all("zhejiang.txt" not in s for s in during)
        # a reindex also serves searches meanwhile, then the new index answers
        r = httpx.post(f"{base}/reindex", headers=WRITE, timeout=60)
        assert r.status_code == 200
        assert httpx.get(f"{base}/health").json()["build_id"] not in (old_build,)
        assert httpx.post(f"{base}/search", json={"query": NEW_QUERY, "k": 1}).json()["hits"][0]["source"] == "zhejiang.txt"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_second_writer_waits_for_the_first(built):
    service = built()
    done = []

    def add(name, text):
        done.append(service.add_documents([(name, text.encode())]).documents[0]["source"])

    a = threading.Thread(target=add, args=("one.txt", NEW_DOC))
    b = threading.Thread(target=add, args=("two.txt", NEW_DOC.replace("Zhejiang", "Fujian")))
    a.start(), b.start()
    a.join(), b.join()
    assert sorted(done) == ["one.txt", "two.txt"]
    sources = {d.source for d in service.snapshot.index.documents.values()}
    assert {"one.txt", "two.txt"} <= sources  # neither update lost the other's document


# --- CLI -------------------------------------------------------------------------------------------------


def test_cli_add_and_remove(tmp_path, capsys):
    from qiao.api.cli import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "base.txt").write_text("Hainan stem cell catalogue\n\nBoao Lecheng published a stem cell technology catalogue.\n", encoding="utf-8")
    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "index", "--corpus", str(corpus), "--quiet"]) == 0
    new = tmp_path / "zhejiang.txt"
    new.write_text(NEW_DOC, encoding="utf-8")
    capsys.readouterr()
    assert main(["--data-dir", str(data), "add", "--corpus", str(corpus), "--quiet", str(new)]) == 0
    out = capsys.readouterr().out
    assert "added zhejiang.txt as " in out and "index: 2 documents" in out
    doc_id = out.split(" as ")[1].split()[0]
    assert main(["--data-dir", str(data), "search", NEW_QUERY, "--k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["source"] == "zhejiang.txt"
    # bad input: one line, exit 2, nothing changed
    bad = tmp_path / "bad.exe"
    bad.write_bytes(b"MZ")
    assert main(["--data-dir", str(data), "add", "--corpus", str(corpus), str(bad)]) == 2
    assert "bad.exe: unsupported file type" in capsys.readouterr().err
    assert main(["--data-dir", str(data), "add", "--corpus", str(corpus), str(tmp_path / "missing.txt")]) == 2
    assert main(["--data-dir", str(data), "add", "--corpus", str(corpus), str(new)]) == 2
    assert "same content" in capsys.readouterr().err
    assert main(["--data-dir", str(data), "remove", "--corpus", str(corpus), doc_id]) == 0
    assert f"removed {doc_id}" in capsys.readouterr().out
    assert main(["--data-dir", str(data), "remove", "--corpus", str(corpus), doc_id]) == 2
    assert "unknown doc_id" in capsys.readouterr().err
    assert main(["--data-dir", str(data), "search", NEW_QUERY, "--k", "3", "--json"]) == 0
    assert all(h["source"] != "zhejiang.txt" for h in json.loads(capsys.readouterr().out)["hits"])


def test_refresh_picks_up_an_update_made_by_another_process(built):
    server_side = built()
    other = service_mod.QiaoService(server_side.settings)  # e.g. `qiao add` in another process
    other._embedder = server_side.embedder
    assert server_side.refresh() is False  # nothing changed yet
    other.add_documents([("zhejiang.txt", NEW_DOC.encode())])
    assert "zhejiang.txt" not in {d.source for d in server_side.snapshot.index.documents.values()}
    assert server_side.refresh() is True
    assert "zhejiang.txt" in {d.source for d in server_side.snapshot.index.documents.values()}
    assert server_side.refresh() is False


@pytest.mark.parametrize("stop_after", ["index-switched", "first-rename"])
def test_an_update_killed_after_the_index_switched_is_rolled_forward(built, monkeypatch, stop_after):
    """The crash window between the index switch and the store commit: the journal finishes the job."""
    from qiao.service.documents import DocumentStore

    service = built()

    class Killed(BaseException):  # not an Exception: nothing in the update path may catch it
        pass

    real_commit = DocumentStore.commit

    def dying_commit(self, change):
        if stop_after == "first-rename":
            staged, final = change.renames[0]
            staged.replace(final)
        raise Killed

    monkeypatch.setattr(DocumentStore, "commit", dying_commit)
    with pytest.raises(Killed):
        service.add_documents([("zhejiang.txt", NEW_DOC.encode())])
    monkeypatch.setattr(DocumentStore, "commit", real_commit)
    # the index switched, the store did not (yet): that is what a restart finds
    assert service.store.has_journal()
    assert "zhejiang.txt" not in {d.source for d in collect_documents(service.settings).documents}
    restarted = service_mod.QiaoService(service.settings)
    restarted._embedder = service.embedder
    with TestClient(create_app(restarted.settings, restarted), headers={"X-Qiao-Request": "1"}) as c:
        listed = {d["source"] for d in c.get("/documents").json()["documents"]}
        stored = {d.source for d in collect_documents(restarted.settings).documents}
        assert "zhejiang.txt" in listed and listed == stored
        assert not restarted.store.has_journal()
        assert upload(c, "zhejiang.txt", NEW_DOC.encode()).status_code == 409
        doc_id = next(d["doc_id"] for d in c.get("/documents").json()["documents"] if d["source"] == "zhejiang.txt")
        assert c.delete(f"/documents/{doc_id}").status_code == 200
    assert not [n for n in store_files(service) if n.startswith(".tmp-")]


def test_an_update_killed_before_the_index_switched_is_rolled_back(built, monkeypatch):
    service = built()

    class Killed(BaseException):
        pass

    def dying_build(*a, **kw):
        raise Killed

    monkeypatch.setattr(service_mod, "build_index", dying_build)
    seed = next(iter(service.snapshot.index.documents.values()))
    with pytest.raises(Killed):
        service.remove_document(seed.doc_id)
    with pytest.raises(Killed):
        service.add_documents([("zhejiang.txt", NEW_DOC.encode())])
    monkeypatch.undo()
    assert service.store.has_journal()
    restarted = service_mod.QiaoService(service.settings)
    restarted._embedder = service.embedder
    assert restarted.recover() == "back"
    assert not restarted.store.has_journal() and not [n for n in store_files(service) if n.startswith(".tmp-")]
    docs = {d.doc_id for d in collect_documents(service.settings).documents}
    assert seed.doc_id in docs and len(docs) == 5
