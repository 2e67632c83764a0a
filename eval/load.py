"""Load test of a real ``qiao serve``: long queries beside short ones, throughput by clients, queries during an upload.

    python -m eval.load [--tree DIR] [--data-dir DIR] [--seconds 8] [--json OUT]

``--tree``: the checkout whose code serves (default: this one), so the same script measures the code
before and after a change (``--tree /work/main``). The server runs as ``python -m qiao.api.cli serve``
in a child process on a loopback port, over a copy of an index of the seed corpus (built once with
``qiao index`` into ``--data-dir``). Every short query is distinct (the query-vector LRU never hits).

Phases:
1. ``long6``: six parallel ``/search`` with 2,000 CJK characters each: when each one finished.
2. ``short_during_long``: one client sends short queries back to back while four clients keep
   sending 2,000-character queries; p50/p95 of the short ones.
3. ``throughput``: 1, 2, 4, 8 clients of short queries for ``--seconds`` each: requests/s and the
   ratio to one client.
4. ``during_upload``: short-query latency while a 600 KB text document is being uploaded and indexed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_text() -> str:
    return "".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "corpus" / "documents").glob("*.txt")))


_CJK: list[str] = []
_LONG = [0]


def long_query(i: int = 0) -> str:
    """2,000 CJK characters of the seed corpus, never the same text twice (a serial number first)."""
    if not _CJK:
        _CJK.extend(c for c in seed_text() if "\u4e00" <= c <= "\u9fff")
    _LONG[0] += 1
    head = f"{_LONG[0]}号"
    start = (i * 997) % max(1, len(_CJK) - 2000)
    return head + "".join(_CJK[start : start + 2000 - len(head)])


def short_queries() -> list[str]:
    lines = [l.strip() for l in seed_text().splitlines() if 12 <= len(l.strip())]
    return [l[:30] if any("\u4e00" <= c <= "\u9fff" for c in l) else " ".join(l.split()[:8]) for l in lines]


class Server:
    def __init__(self, tree: Path, data: Path, env: dict | None = None):
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        e = {**os.environ, "QIAO_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qiao.api.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=tree, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if json.load(r)["index_loaded"]:
                        break
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"server did not start: {self.proc.stderr.read()[-2000:]!r}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def post(url: str, body: dict, timeout: float = 120) -> tuple[int, float]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            code = r.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except OSError:
        code = 0
    return code, time.perf_counter() - t0


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


class Counter:
    def __init__(self, queries: list[str]):
        self.queries = queries
        self.i = 0
        self.lock = threading.Lock()

    def next(self) -> str:
        with self.lock:
            self.i += 1
            return f"{self.queries[self.i % len(self.queries)]} {self.i}"


def phase_long6(url: str) -> dict:
    ends: list[tuple[float, int]] = []
    t0 = time.perf_counter()

    def one(i):
        code, _ = post(url + "/search", {"query": long_query(i), "k": 10})
        ends.append((time.perf_counter() - t0, code))

    ts = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    ends.sort()
    return {"finished_s": [round(e, 2) for e, _ in ends], "codes": [c for _, c in ends]}


def phase_short_during_long(url: str, counter: Counter, seconds: float) -> dict:
    stop = time.perf_counter() + seconds
    longs: list[tuple[int, float]] = []
    shorts: list[tuple[int, float]] = []

    def long_client(i):
        j = 0
        while time.perf_counter() < stop:
            longs.append(post(url + "/search", {"query": long_query(i * 10 + j), "k": 10}))
            j += 1

    ts = [threading.Thread(target=long_client, args=(i,)) for i in range(4)]
    [t.start() for t in ts]
    time.sleep(0.5)
    while time.perf_counter() < stop:
        shorts.append(post(url + "/search", {"query": counter.next(), "k": 10}))
    [t.join() for t in ts]
    lat = [d * 1000 for c, d in shorts if c == 200]
    return {
        "short_n": len(shorts), "short_ok": len(lat), "short_p50_ms": round(_pct(lat, 50), 1),
        "short_p95_ms": round(_pct(lat, 95), 1), "long_n": len(longs),
        "long_codes": sorted({c for c, _ in longs}), "long_mean_s": round(statistics.mean(d for _, d in longs), 2) if longs else None,
    }


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process ``pid`` and its live descendants (a multi-process
    server's workers), from /proc; 0.0 where there is no /proc."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    stats: dict[int, tuple[int, float]] = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(d.name)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)  # ppid, utime + stime
    total, todo, seen = 0.0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen or p not in stats:
            continue
        seen.add(p)
        total += stats[p][1]
        todo.extend(c for c, (pp, _) in stats.items() if pp == p)
    return total


def phase_clients(url: str, counter: Counter, clients: int, seconds: float, server_pid: int | None = None) -> dict:
    stop = time.perf_counter() + seconds
    res: list[tuple[int, float]] = []

    def client():
        while time.perf_counter() < stop:
            res.append(post(url + "/search", {"query": counter.next(), "k": 10}))

    t0 = time.perf_counter()
    cpu0 = tree_cpu(server_pid) if server_pid else 0.0
    ts = [threading.Thread(target=client) for _ in range(clients)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    wall = time.perf_counter() - t0
    cpu = (tree_cpu(server_pid) - cpu0) if server_pid else 0.0
    lat = [d * 1000 for c, d in res if c == 200]
    return {"clients": clients, "rps": round(len(lat) / wall, 2), "p50_ms": round(_pct(lat, 50), 1),
            "p95_ms": round(_pct(lat, 95), 1), "errors": len(res) - len(lat),
            # the server's CPU: cores it kept busy, and CPU ms per answered request (steadier than req/s when shared)
            "server_cores": round(cpu / wall, 2), "server_cpu_ms_per_req": round(1000 * cpu / max(1, len(lat)), 1)}


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "qiaoloadboundary"
    body = io.BytesIO()
    body.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
               "Content-Type: text/plain\r\n\r\n".encode())
    body.write(data)
    body.write(f"\r\n--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def phase_during_upload(url: str, counter: Counter) -> dict:
    text = seed_text()
    doc = ("Load test document " + str(time.time()) + "\n\n" + "\n\n".join(
        f"{i}. " + text[(i * 331) % (len(text) - 400):][:300] for i in range(60))).encode()
    body, ctype = _multipart("loadtest.txt", doc)
    out: dict = {}

    def upload():
        req = urllib.request.Request(url + "/documents", data=body, headers={"content-type": ctype, "X-Qiao-Request": "1"})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=900) as r:
                out["upload_status"] = r.status
                out["chunks"] = json.load(r)["documents"][0]["chunks"]
        except urllib.error.HTTPError as exc:
            out["upload_status"] = exc.code
        out["upload_s"] = round(time.perf_counter() - t0, 2)

    t = threading.Thread(target=upload)
    t.start()
    time.sleep(1.0)
    lat = []
    while t.is_alive():
        code, d = post(url + "/search", {"query": counter.next(), "k": 10})
        if code == 200:
            lat.append(d * 1000)
        time.sleep(0.05)
    t.join()
    out.update({"queries": len(lat), "p50_ms": round(_pct(lat, 50), 1), "p95_ms": round(_pct(lat, 95), 1),
                "max_ms": round(max(lat), 1) if lat else None})
    return out


def ensure_index(tree: Path, data: Path) -> None:
    if (data / "index" / "current").exists():
        return
    env = {**os.environ, "QIAO_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "qiao.api.cli", "index", "--quiet"], cwd=tree, env=env, check=True)


def run_tree(tree: Path, base: Path, phases: list[str], seconds: float, env: dict, name: str | None = None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="qiao-load-"))
    data = work / "data"
    shutil.copytree(base, data, symlinks=True)
    server = Server(tree, data, env)
    counter = Counter(short_queries())
    result: dict = {"tree": str(tree), "name": name or tree.name, "env": env, "loadavg_start": os.getloadavg()[0]}
    try:
        warm_ok, deadline = 0, time.time() + 180
        while warm_ok < 6 and time.time() < deadline:  # first requests load the bridge dictionary, USE, jieba (per process)
            warm_ok += post(server.url + "/search", {"query": counter.next(), "k": 10})[0] == 200
        if "throughput" in phases:  # first: nothing queued by other phases yet
            rows = [phase_clients(server.url, counter, c, seconds, server.proc.pid) for c in (1, 2, 4, 8)]
            for r in rows:
                r["ratio"] = round(r["rps"] / rows[0]["rps"], 2) if rows[0]["rps"] else None
            result["throughput"] = rows
            print(tree, "throughput", rows, flush=True)
        if "long6" in phases:
            result["long6"] = phase_long6(server.url)
            print(tree, "long6", result["long6"], flush=True)
        if "short_during_long" in phases:
            result["short_during_long"] = phase_short_during_long(server.url, counter, max(seconds * 2, 15))
            print(tree, "short_during_long", result["short_during_long"], flush=True)
        if "during_upload" in phases:
            result["during_upload"] = phase_during_upload(server.url, counter)
            print(tree, "during_upload", result["during_upload"], flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    result["loadavg_end"] = os.getloadavg()[0]
    return result


def markdown(runs: list[dict]) -> str:
    """One table per phase, a column per run."""
    names = [f"{r.get('name') or Path(r['tree']).name} (load {r['loadavg_start']:.1f})" for r in runs]
    out = ["# Qiao under load (`python -m eval.load`)", "",
           "A real `qiao serve` per checkout, one after the other, on this 2-core machine; the load average is the",
           "machine's (other jobs included) when the run started. Short queries are distinct real lines of the seed",
           "corpus; long ones 2,000 distinct CJK characters. A 503 is the request time budget (QIAO_REQUEST_TIMEOUT_S,",
           "8 s since the heavy lane, 10 s before) answering instead of a hang; a 429 is the heavy lane (api/admission.py) full;",
           "status 0 is the client giving up (120 s).", ""]
    if all("throughput" in r for r in runs):
        out += ["## /search throughput by clients (short queries)", "",
                "| clients | " + " | ".join(f"{n}: req/s, p50 ms, ratio, server cores" for n in names) + " |",
                "|---|" + "---|" * len(runs)]
        for i, c in enumerate((1, 2, 4, 8)):
            cells = [f"{r['throughput'][i]['rps']}, {r['throughput'][i]['p50_ms']}, {r['throughput'][i]['ratio']}x, "
                     f"{r['throughput'][i].get('server_cores', '-')}" for r in runs]
            out.append(f"| {c} | " + " | ".join(cells) + " |")
        out.append("")
    if all("long6" in r for r in runs):
        out += ["## Six parallel 2,000-character queries: finished at (s), status", ""]
        for n, r in zip(names, runs):
            out.append(f"- {n}: " + ", ".join(f"{t} ({c})" for t, c in zip(r["long6"]["finished_s"], r["long6"]["codes"])))
        out.append("")
    if all("short_during_long" in r for r in runs):
        out += ["## Short queries while four clients send 2,000-character queries", "",
                "| run | short p50 ms | short p95 ms | short queries | long: statuses, mean s |", "|---|---|---|---|---|"]
        for n, r in zip(names, runs):
            x = r["short_during_long"]
            out.append(f"| {n} | {x['short_p50_ms']} | {x['short_p95_ms']} | {x['short_n']} | {x['long_codes']}, {x['long_mean_s']} |")
        out.append("")
    if all("during_upload" in r for r in runs):
        out += ["## Short queries during an upload (60 paragraphs, ~43 new passages)", "",
                "| run | upload s | queries | p50 ms | p95 ms | max ms |", "|---|---|---|---|---|---|"]
        for n, r in zip(names, runs):
            x = r["during_upload"]
            out.append(f"| {n} | {x.get('upload_s')} | {x['queries']} | {x['p50_ms']} | {x['p95_ms']} | {x['max_ms']} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", default=str(ROOT))
    ap.add_argument("--compare", help="another checkout to run first with the same phases (e.g. /work/main)")
    ap.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "qiao-load-index"))
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--phases", default="throughput,long6,short_during_long,during_upload")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="also run the tree with these server settings (e.g. 'two-procs:QIAO_SERVER_WORKERS=2')")
    ap.add_argument("--rounds", type=int, default=1, help="run every checkout/variant this many times, interleaved")
    ap.add_argument("--json")
    ap.add_argument("--md", help="write the tables here (e.g. eval/LOAD.md)")
    args = ap.parse_args(argv)
    base = Path(args.data_dir)
    ensure_index(Path(args.tree), base)
    env = dict(kv.split("=", 1) for kv in args.env)
    phases = args.phases.split(",")
    trees = ([Path(args.compare)] if args.compare else []) + [Path(args.tree)]
    plan: list[tuple[Path, dict, str | None]] = [(t, env, None) for t in trees]
    for v in args.variant:
        vname, _, kvs = v.partition(":")
        plan.append((Path(args.tree), {**env, **dict(kv.split("=", 1) for kv in kvs.split(",") if kv)}, vname))
    runs = [run_tree(t, base, phases, args.seconds, e, n) for _ in range(args.rounds) for t, e, n in plan]
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1, ensure_ascii=False))
    if args.md:
        Path(args.md).write_text(markdown(runs) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
