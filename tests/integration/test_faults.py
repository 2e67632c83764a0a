"""Crash safety: SIGKILL during ``qiao index`` and during an upload, corrupt indexes at the server,
and two writers at once.

Kill points are exact: the child process runs the real CLI / server with ``os.fsync``,
``os.rename``, ``os.replace``, ``os.symlink``, ``os.unlink`` and ``os.rmdir`` wrapped, and sends
itself SIGKILL at the k-th of those calls (the file-system steps of a build and of an upload). A
baseline run lists the steps; ``make test`` kills at the interesting ones, ``make soak`` at every
one. A few kills at random times (including mid-embedding) complement them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from filelock import FileLock

from support import free_port
from qiao.api.app import create_app
from qiao.service.core import QiaoService, collect_documents
from qiao.corpus.extract import extract
from qiao.corpus.chunking import chunk_document
from qiao.index.embedders import text_key
from qiao.index.store import current_build, load_index
from qiao.settings import PROJECT_ROOT, Settings

SEED_DIR = PROJECT_ROOT / "corpus" / "documents"
OLD = ("000", "001", "004")  # the corpus of the index that exists before the crash
NEW_DOC = (
    "Zhejiang pilot on porcine kidney xenotransplantation\n"
    "Release Date: 2024-06-01\n\n"
    "The Zhejiang Provincial Health Commission approved a pilot programme for porcine kidney "
    "xenotransplantation research at three hospitals in Hangzhou.\n"
)
NEW_QUERY = "porcine kidney xenotransplantation Hangzhou"

DRIVER = r"""
import os, signal, sys
kill_at = int(os.environ.get("QIAO_KILL_AT", "0"))
trace = os.environ.get("QIAO_TRACE")
n = 0

def wrap(name):
    real = getattr(os, name)

    def hooked(*a, **kw):
        global n
        n += 1
        if trace:
            with open(trace, "a") as f:
                f.write(f"{n}\t{name}\t{' '.join(str(x) for x in a)}\n")
        if n == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **kw)

    setattr(os, name, hooked)

for name in ("fsync", "rename", "replace", "symlink", "unlink", "rmdir"):
    wrap(name)
from qiao.api.cli import main
sys.exit(main(sys.argv[1:]))
"""

WRITE = {"X-Qiao-Request": "1"}  # writes are refused without it (api/origin.py)


# --- fixtures -------------------------------------------------------------------------------


def _env(**extra) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("QIAO_KILL_AT", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _copy_cache(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    with b:
        a.backup(b)
    a.close(), b.close()


@dataclass
class World:
    """A template data dir (old index over OLD, full embedding cache) and the two corpora."""

    tmp: Path
    template: Path
    old_corpus: Path
    new_corpus: Path
    old_build: str
    driver: Path
    embedder: object

    def fresh(self, name: str) -> Path:
        d = self.tmp / name
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(self.template, d, symlinks=True)
        return d

    def service(self, data: Path, corpus: Path | None = None) -> QiaoService:
        s = QiaoService(Settings(data_dir=data, corpus_dir=corpus or self.new_corpus))
        s._embedder = self.embedder  # a restart, minus the model load
        return s


@pytest.fixture(scope="module")
def world(tmp_path_factory, seed_service, shared_cache_dir) -> World:
    tmp = tmp_path_factory.mktemp("faults")
    old_corpus, new_corpus = tmp / "old-corpus", tmp / "new-corpus"
    old_corpus.mkdir(), new_corpus.mkdir()
    for p in sorted(SEED_DIR.glob("*.txt")):
        shutil.copy(p, new_corpus / p.name)
        if p.name[:3] in OLD:
            shutil.copy(p, old_corpus / p.name)
    template = tmp / "template"
    _copy_cache(shared_cache_dir / "embeddings.sqlite", template / "cache" / "embeddings.sqlite")
    service = QiaoService(Settings(data_dir=template, corpus_dir=old_corpus))
    service._embedder = seed_service.embedder
    report = service.build(collect_documents(service.settings).documents, progress=False)
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    return World(tmp, template, old_corpus, new_corpus, report.build_id, driver, seed_service.embedder)


def run_driver(world: World, argv: list[str], kill_at: int = 0, trace: Path | None = None, timeout: float = 120, **env):
    extra = {"QIAO_KILL_AT": kill_at, **env}
    if trace is not None:
        extra["QIAO_TRACE"] = trace
    return subprocess.run(
        [sys.executable, str(world.driver), *argv], cwd=PROJECT_ROOT, env=_env(**extra),
        capture_output=True, text=True, timeout=timeout,
    )


def read_trace(path: Path) -> list[tuple[int, str, str]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        n, op, args = line.split("\t", 2)
        rows.append((int(n), op, args))
    return rows


def leftovers(data: Path) -> list[str]:
    """Temporaries a crash can leave: half-written builds, link temporaries, staged document files."""
    out = []
    builds = data / "index" / "builds"
    if builds.is_dir():
        out += [p.name for p in builds.iterdir() if p.name.startswith(".tmp-")]
    if (data / "index").is_dir():
        out += [p.name for p in (data / "index").iterdir() if p.name.startswith(".current-")]
    if (data / "documents").is_dir():
        out += [p.name for p in (data / "documents").iterdir() if p.name.startswith(".tmp-")]
    return out


# --- SIGKILL during `qiao index` --------------------------------------------------------------


@pytest.fixture(scope="module")
def index_steps(world) -> list[tuple[int, str, str]]:
    data = world.fresh("index-baseline")
    trace = world.tmp / "index-baseline.trace"
    r = run_driver(world, ["--data-dir", str(data), "index", "--corpus", str(world.new_corpus), "--quiet"], trace=trace)
    assert r.returncode == 0, r.stderr
    steps = read_trace(trace)
    ops = [op for _, op, _ in steps]
    assert {"fsync", "rename", "symlink", "replace"} <= set(ops), steps
    return steps


def interesting(steps: list[tuple[int, str, str]]) -> list[int]:
    """The first step, every rename / symlink / replace and the step after it, the first and a middle
    fsync, and the first and a middle step of removing old builds."""
    picks = {steps[0][0], steps[-1][0]}
    fsyncs = [n for n, op, _ in steps if op == "fsync"]
    picks |= {fsyncs[0], fsyncs[len(fsyncs) // 2]}
    for i, (n, op, _) in enumerate(steps):
        if op in ("rename", "symlink", "replace"):
            picks.add(n)
            if i + 1 < len(steps):
                picks.add(steps[i + 1][0])
    removals = [n for n, op, args in steps if op in ("unlink", "rmdir") and "/builds/" in args]
    if removals:
        picks |= {removals[0], removals[len(removals) // 2]}
    return sorted(picks)


def check_after_index_crash(world: World, data: Path, n_new_docs: int) -> str:
    """After a crash the index that loads is the old one or the complete new one, never a partial one."""
    build = current_build(data / "index")
    assert build is not None and not build.name.startswith("."), build
    loaded = load_index(data / "index", verify=True)  # raises on anything partial
    docs = loaded.manifest["documents"]
    if loaded.manifest["build_id"] == world.old_build:
        assert docs == len(OLD)
        state = "old"
    else:
        assert docs == n_new_docs and loaded.size == loaded.vector_index.size
        state = "new"
    # a restarted server serves it, and has cleaned the crash's temporaries on load
    service = world.service(data)
    with TestClient(create_app(service.settings, service), headers={"X-Qiao-Request": "1"}) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["documents"] == docs
        r = client.post("/search", json={"query": "stem cell clinical research", "k": 3})
        assert r.status_code == 200 and len(r.json()["hits"]) == 3
    assert leftovers(data) == [], leftovers(data)
    return state


def _kill_index_at(world: World, k: int, steps) -> str:
    data = world.fresh(f"index-kill-{k}")
    r = run_driver(world, ["--data-dir", str(data), "index", "--corpus", str(world.new_corpus), "--quiet"], kill_at=k)
    assert r.returncode == -signal.SIGKILL, (k, steps[k - 1], r.returncode, r.stderr[-2000:])
    try:
        return check_after_index_crash(world, data, 5)
    except AssertionError as exc:
        raise AssertionError(f"after SIGKILL at step {steps[k - 1]}: {exc}") from exc


def test_sigkill_at_each_step_of_qiao_index(world, index_steps):
    states = {}
    for k in interesting(index_steps):
        states[k] = _kill_index_at(world, k, index_steps)
    # the switch is one step: before it the old index serves, after it the new one
    switch = next(n for n, op, args in index_steps if op == "replace" and args.endswith("/current"))
    assert all(state == ("old" if k <= switch else "new") for k, state in states.items()), states
    # and a plain `qiao index` afterwards repairs everything (one real CLI run is enough here)
    data = world.tmp / f"index-kill-{min(states)}"
    r = run_driver(world, ["--data-dir", str(data), "index", "--corpus", str(world.new_corpus), "--quiet"])
    assert r.returncode == 0 and "indexed 5 documents" in r.stdout, r.stderr
    assert leftovers(data) == []


@pytest.mark.soak
def test_sigkill_at_every_step_of_qiao_index(world, index_steps):
    for k in range(1, len(index_steps) + 1):
        _kill_index_at(world, k, index_steps)


def _cache_rows(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=5) as c:
            return c.execute("SELECT count(*) FROM emb").fetchone()[0]
    except sqlite3.Error:
        return -1


def test_sigkill_mid_embedding_keeps_the_old_index_and_the_work_done(world):
    """The real `qiao index` killed while it embeds (the long part of a build): the old index still
    serves, and the rerun embeds only what the killed run had not saved yet."""
    data = world.fresh("embed-kill")
    cache = data / "cache" / "embeddings.sqlite"
    # one new document's passages are missing from the cache (the other new one is cached)
    settings = Settings(corpus_dir=world.new_corpus, data_dir=data)
    new = [d for d in collect_documents(settings).documents if d.source[:3] == "003"]
    keys = [text_key(c.embed_text) for d in new for c in chunk_document(d, settings.chunk_size, settings.chunk_overlap)]
    with sqlite3.connect(cache) as c:
        c.executemany("DELETE FROM emb WHERE key=?", [(k,) for k in keys])
    before = _cache_rows(cache)
    env = _env(QIAO_EMBED_BATCH_SIZE=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "qiao.api.cli", "--data-dir", str(data), "index", "--corpus", str(world.new_corpus), "--quiet"],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 120
        while _cache_rows(cache) <= before and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the build finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    saved = _cache_rows(cache) - before
    assert 0 < saved < len(set(keys))
    assert check_after_index_crash(world, data, 5) == "old"
    r = subprocess.run(
        [sys.executable, "-m", "qiao.api.cli", "--data-dir", str(data), "index", "--corpus", str(world.new_corpus), "--quiet"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert f"({len(set(keys)) - saved} embedded" in r.stdout, (saved, r.stdout)


@pytest.mark.parametrize("run", [0, 1, pytest.param(2, marks=pytest.mark.soak), pytest.param(3, marks=pytest.mark.soak)])
def test_sigkill_at_a_random_time_during_qiao_index(world, run):
    """Unpatched `qiao index`, killed after a random delay (start-up, chunking, writing or done)."""
    data = world.fresh(f"random-kill-{run}")
    delay = random.Random(run).uniform(0.2, 2.5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "qiao.api.cli", "--data-dir", str(data), "index", "--corpus", str(world.new_corpus), "--quiet"],
        cwd=PROJECT_ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    check_after_index_crash(world, data, 5)


# --- SIGKILL during an upload to the server ---------------------------------------------------------


class Server:
    """`qiao serve` in a child process (through the kill-point driver)."""

    def __init__(self, world: World, data: Path, kill_at: int = 0, trace: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        extra = {"QIAO_KILL_AT": kill_at, "QIAO_DATA_DIR": data, "QIAO_CORPUS_DIR": world.new_corpus}
        if trace is not None:
            extra["QIAO_TRACE"] = trace
        self.proc = subprocess.Popen(
            [sys.executable, str(world.driver), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=PROJECT_ROOT, env=_env(**extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).json().get("status") == "ok":
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise AssertionError(f"server did not start: {self.proc.stderr.read()[-2000:]}")
            time.sleep(0.1)

    def upload(self, name: str = "zhejiang.txt", text: str = NEW_DOC):
        return httpx.post(f"{self.url}/documents", files=[("files", (name, text.encode(), "text/plain"))], headers=WRITE, timeout=120)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stderr.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def upload_world(world) -> World:
    """The template with the full seed corpus indexed (the server's corpus is new_corpus)."""
    data = world.fresh("upload-template")
    world.service(data).build(collect_documents(Settings(data_dir=data, corpus_dir=world.new_corpus)).documents, progress=False)
    return World(world.tmp, data, world.old_corpus, world.new_corpus, load_index(data / "index").manifest["build_id"],
                 world.driver, world.embedder)


@pytest.fixture(scope="module")
def upload_steps(upload_world) -> list[tuple[int, str, str]]:
    data = upload_world.fresh("upload-baseline")
    trace = upload_world.tmp / "upload-baseline.trace"
    server = Server(upload_world, data, trace=trace)
    try:
        started = len(read_trace(trace))
        r = server.upload()
        assert r.status_code == 201, r.text
    finally:
        server.stop()
    steps = read_trace(trace)[started:]
    assert steps, "the upload touched no files?"
    return steps


def _step(steps, pred, offset: int = 0) -> int:
    i = next(i for i, s in enumerate(steps) if pred(*s))
    return steps[i + offset][0]


UPLOAD_POINTS = {
    # name: where in the baseline trace (first matching step, plus an offset); the kill comes before that step
    "staging-first-file": lambda st: st[0][0],
    "staging-done": lambda st: _step(st, lambda n, op, a: op == "replace" and ".json" in a),
    "journal-written": lambda st: _step(st, lambda n, op, a: op == "replace" and a.endswith("/.pending.json"), 1),
    "index-written-not-renamed": lambda st: _step(st, lambda n, op, a: op == "rename" and "/builds/" in a),
    "index-renamed-not-current": lambda st: _step(st, lambda n, op, a: op == "replace" and a.endswith("/current")),
    "index-current-store-not-committed": lambda st: _step(st, lambda n, op, a: op == "replace" and a.endswith("/current"), 1),
    "store-half-committed": lambda st: _step(st, lambda n, op, a: op == "replace" and "/documents/" in a and "/.tmp-.tmp" not in a and ".pending" not in a, 1),
    "last-step": lambda st: st[-1][0],
}
# The window between the index switch and the store commit used to leave an index serving a
# document the store did not have (listed by GET /documents, 404 on DELETE, dropped by the next
# rebuild); the document store's journal now rolls such an update forward on restart.
FAST_UPLOAD_POINTS = ["staging-done", "index-renamed-not-current", "index-current-store-not-committed", "store-half-committed"]


def _crash_upload(w: World, k: int, name: str) -> Path:
    """A server on a fresh copy of the data, SIGKILLed at step ``k`` of an upload; returns the data dir."""
    data = w.fresh(f"upload-kill-{name}-{k}")
    server = Server(w, data, kill_at=k)  # k counts from process start, like the baseline trace
    try:
        with pytest.raises(httpx.HTTPError):
            server.upload()  # the connection dies with the process
    finally:
        rc = server.stop()
    assert rc == -signal.SIGKILL, (name, rc)
    return data


def _kill_upload_at(upload_world: World, k: int, steps, name: str) -> None:
    check_after_upload_crash(upload_world, _crash_upload(upload_world, k, name))


def check_after_upload_crash(w: World, data: Path) -> None:
    # the index on disk loads: either the one before the upload or the complete new one
    loaded = load_index(data / "index", verify=True)
    added = loaded.manifest["build_id"] != w.old_build
    assert loaded.manifest["documents"] == (6 if added else 5)
    service = w.service(data)
    with TestClient(create_app(service.settings, service), headers={"X-Qiao-Request": "1"}) as client:
        assert client.get("/health").json()["status"] == "ok"
        listed = {d["doc_id"] for d in client.get("/documents").json()["documents"]}
        stored = {d.doc_id for d in collect_documents(service.settings).documents}
        # what the server serves is what is stored: nothing lost, nothing that cannot be deleted
        assert listed == stored, f"index serves {sorted(listed - stored)} that the store lacks; store has {sorted(stored - listed)} not served"
        # uploading again completes the interrupted update (or says it already happened)
        r = client.post("/documents", files=[("files", ("zhejiang.txt", NEW_DOC.encode(), "text/plain"))])
        assert r.status_code in (201, 409), r.text
        assert (r.status_code == 409) == added
        hits = client.post("/search", json={"query": NEW_QUERY, "k": 1}).json()["hits"]
        assert hits[0]["source"] == "zhejiang.txt"
        assert client.delete(f"/documents/{hits[0]['doc_id']}").status_code == 200
        assert leftovers(data) == [], leftovers(data)


@pytest.mark.parametrize(
    "name", [n if n in FAST_UPLOAD_POINTS else pytest.param(n, marks=pytest.mark.soak) for n in UPLOAD_POINTS]
)
def test_sigkill_during_an_upload(upload_world, upload_steps, name):
    k = UPLOAD_POINTS[name](upload_steps)
    _kill_upload_at(upload_world, k, upload_steps, name)


@pytest.mark.soak
def test_sigkill_at_every_step_of_an_upload(upload_world, upload_steps):
    failures = []
    for n, op, args in upload_steps:
        try:
            _kill_upload_at(upload_world, n, upload_steps, f"step{n}")
        except AssertionError as exc:
            failures.append(f"step {n} {op} {args.split('/')[-1]}: {str(exc).splitlines()[0]}")
    assert not failures, failures


def test_qiao_index_after_a_crashed_upload_keeps_the_upload(upload_world, upload_steps):
    """`qiao index` run after a server died between the index switch and the store commit finishes
    that upload first, so the rebuilt index still holds the document the store now has."""
    k = UPLOAD_POINTS["index-current-store-not-committed"](upload_steps)
    data = _crash_upload(upload_world, k, "then-cli-index")
    r = run_driver(upload_world, ["--data-dir", str(data), "index", "--corpus", str(upload_world.new_corpus), "--quiet"])
    assert r.returncode == 0 and "indexed 6 documents" in r.stdout, (r.stdout, r.stderr)
    stored = {d.source for d in collect_documents(Settings(data_dir=data, corpus_dir=upload_world.new_corpus)).documents}
    indexed = {d.source for d in load_index(data / "index").documents.values()}
    assert "zhejiang.txt" in stored and stored == indexed
    assert leftovers(data) == [] and not (data / "documents" / ".pending.json").exists()


# --- corrupt index at the server -------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate-faiss", "drop-bm25", "edit-manifest"])
def test_server_refuses_a_corrupt_index_and_recovers(world, damage):
    data = world.fresh(f"corrupt-{damage}")
    build = current_build(data / "index")
    if damage == "truncate-faiss":
        with open(build / "vectors.faiss", "r+b") as f:
            f.truncate(64)
    elif damage == "drop-bm25":
        for p in (build / "bm25").glob("*.npy"):
            p.unlink()
    else:
        m = json.loads((build / "manifest.json").read_text())
        m["chunks"] += 7
        (build / "manifest.json").write_text(json.dumps(m))
    service = world.service(data, corpus=world.old_corpus)
    with TestClient(create_app(service.settings, service), headers={"X-Qiao-Request": "1"}) as client:
        h = client.get("/health").json()
        assert h["status"] == "no_index" and "qiao index" in h["detail"]
        for method, path, body in [
            ("post", "/search", {"query": "stem cell"}),
            ("get", "/documents", None),
            ("post", "/ask", {"question": "Which regions support stem cell research?"}),
        ]:
            r = client.request(method, path, json=body)
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert "qiao index" in r.text
        # a reindex through the API (or `qiao index`) repairs it
        r = client.post("/reindex")
        assert r.status_code == 200, r.text
        assert client.get("/health").json()["status"] == "ok"
        assert client.post("/search", json={"query": "stem cell", "k": 2}).json()["hits"]


# --- two writers at once ---------------------------------------------------------------------------


def test_cli_index_waits_for_a_writer_holding_the_documents_lock(world):
    """`qiao index` used to read the document set without the documents lock, so an upload or
    `qiao add` finishing in between was dropped from the index it then switched to."""
    data = world.fresh("lock-index")
    (data / "documents").mkdir(exist_ok=True)
    lock = FileLock(str(data / "documents" / ".lock"))
    lock.acquire()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qiao.api.cli", "--data-dir", str(data), "index", "--corpus", str(world.new_corpus), "--quiet"],
        cwd=PROJECT_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(2.5)
        assert proc.poll() is None, f"qiao index did not wait for the lock: {proc.communicate()}"
        # the other writer adds a document meanwhile (as `qiao add` does, under the lock)
        other = world.service(data)
        ex = extract(NEW_DOC.encode(), "zhejiang.txt")
        other.store.commit(other.store.stage_add([(ex.to_document(), ex)]))
    finally:
        lock.release()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "waiting for another update" in err
    assert "indexed 6 documents" in out  # the document added while it waited is in
    assert "zhejiang.txt" in {d.source for d in load_index(data / "index").documents.values()}


def test_cli_add_while_the_server_reindexes(world):
    """A server reindex and a concurrent `qiao add` in another process: both succeed, in turn,
    and the index ends up with the added document and loads cleanly."""
    data = world.fresh("two-writers")
    world.service(data).build(collect_documents(Settings(data_dir=data, corpus_dir=world.new_corpus)).documents, progress=False)
    server = Server(world, data)
    try:
        doc = world.tmp / "zhejiang.txt"
        doc.write_text(NEW_DOC)
        results = {}

        def reindex():
            results["reindex"] = httpx.post(f"{server.url}/reindex", headers=WRITE, timeout=120).status_code

        t = threading.Thread(target=reindex)
        t.start()
        add = subprocess.run(
            [sys.executable, "-m", "qiao.api.cli", "--data-dir", str(data), "add", "--corpus", str(world.new_corpus), "--quiet", str(doc)],
            cwd=PROJECT_ROOT, env=_env(), capture_output=True, text=True, timeout=180,
        )
        t.join(timeout=180)
        assert add.returncode == 0, add.stderr
        assert results.get("reindex") == 200
        # a second reindex by the server sees the CLI's document (it reads the store under the lock)
        assert httpx.post(f"{server.url}/reindex", headers=WRITE, timeout=120).status_code == 200
        hits = httpx.post(f"{server.url}/search", json={"query": NEW_QUERY, "k": 1}, timeout=60).json()["hits"]  # may reload the index first
        assert hits[0]["source"] == "zhejiang.txt"
    finally:
        server.stop()
    loaded = load_index(data / "index", verify=True)
    assert loaded.manifest["documents"] == 6
    assert leftovers(data) == []


def test_a_writer_that_cannot_get_the_lock_gets_a_clear_busy_error(world):
    """The loser of two writers either waits (the default) or, past its timeout, gets a "busy" error
    that the API answers with 503 and Retry-After; nothing is changed."""
    from qiao.api.errors import qiao_error_response
    from qiao.index.store import IndexBusyError

    data = world.fresh("busy")
    service = world.service(data, corpus=world.old_corpus)
    service.load()
    before = load_index(data / "index").manifest["build_id"]
    (data / "documents").mkdir(exist_ok=True)
    with FileLock(str(data / "documents" / ".lock")):  # another process is mid-update
        t0 = time.monotonic()
        with pytest.raises(IndexBusyError, match="try again") as exc:
            service.add_documents([("zhejiang.txt", NEW_DOC.encode())], lock_timeout=0.5)
        assert time.monotonic() - t0 < 5
    http = qiao_error_response(exc.value)  # the one HTTP mapping of the error family
    assert http.status_code == 503 and http.headers.get("Retry-After") == "5"
    assert load_index(data / "index").manifest["build_id"] == before
    assert [p.name for p in (data / "documents").iterdir() if not p.name.startswith(".")] == []
