"""Build time and cold ``/ask`` latency on a corpus, for one or more source trees side by side.

    python -m eval.ask_cold [--tree /work/main --tree .] [--corpus DIR] [--questions FILE] [--limit N]

Per tree, in one run and in order (so the trees share the machine's load of that moment):

1. ``qiao index`` over ``--corpus`` into a fresh data directory (empty embedding cache: every
   passage, and with index-time unit vectors every citable unit, is embedded): wall time of the
   CLI process, and the unit-vector files' sizes when the tree writes them.
2. A fresh ``qiao serve`` on a free loopback port over that index; as soon as ``/health`` says the
   index is loaded, every question of ``--questions`` (the openqa-dev format: ``{"question", ...}``)
   is POSTed once to ``/ask`` (k=8) by one client, in file order: nothing was asked before, so no
   unit was embedded by an earlier question (cold). Client-side latency p50 / p95 / max over every
   request (an error, e.g. a 503 at ``QIAO_REQUEST_TIMEOUT_S``, counts with its time), the number
   of errors, and the first ten questions' own figures (the very coldest).

Defaults: the openqa-dev set of the shared data directory. Results print as a markdown table and
JSON (``--json-out``). The machine is shared: compare trees within one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qiao.settings import PROJECT_ROOT


def _shared_data() -> Path:
    for base in (PROJECT_ROOT.parent, PROJECT_ROOT.parent.parent):  # a clone beside shared/, or a worktree under wt/
        if (base / "shared" / "data").is_dir():
            return base / "shared" / "data"
    return PROJECT_ROOT.parent / "shared" / "data"


OPENQA = _shared_data() / "openqa-dev"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _python(tree: Path) -> str:
    return sys.executable


def build(tree: Path, data_dir: Path, corpus: Path, env: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [_python(tree), "-m", "qiao.api.cli", "--data-dir", str(data_dir), "index", "--corpus", str(corpus), "--quiet"],
        cwd=tree, env=env, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"qiao index failed in {tree}:\n{proc.stderr[-3000:]}")
    current = (data_dir / "index" / "current").resolve()
    manifest = json.loads((current / "manifest.json").read_text(encoding="utf-8"))
    units = manifest.get("units") or {}
    return {"seconds": round(seconds, 1), "chunks": manifest.get("chunks"), "units": units.get("count"),
            "unit_kinds": sorted((units.get("kinds") or {}).keys()),
            "unit_bytes": sum(int(f.get("bytes", 0)) for f in (units.get("files") or {}).values())}


def serve_and_ask(tree: Path, data_dir: Path, corpus: Path, questions: list[str], env: dict) -> dict:
    import httpx

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    logf = open(data_dir / "server.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [_python(tree), "-m", "qiao.api.cli", "--data-dir", str(data_dir), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tree, stdout=logf, stderr=subprocess.STDOUT, env={**env, "QIAO_CORPUS_DIR": str(corpus)},
    )
    try:
        ready = None
        while time.perf_counter() - t0 < 300:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {data_dir / 'server.log'}")
            try:
                if httpx.get(base + "/health", timeout=2).json().get("index_loaded"):
                    ready = time.perf_counter() - t0
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        if ready is None:
            raise RuntimeError("server did not become healthy within 300 s")
        lat, took, errors = [], [], 0
        with httpx.Client(base_url=base, timeout=120) as client:
            for q in questions:
                t1 = time.perf_counter()
                r = client.post("/ask", json={"question": q, "k": 8})
                dt = (time.perf_counter() - t1) * 1000
                lat.append(dt)  # a failed request (a 503 after QIAO_REQUEST_TIMEOUT_S) is counted with its time
                if r.status_code == 200:
                    took.append(float(r.json().get("took_ms") or 0))
                else:
                    errors += 1
        a = np.array(lat) if lat else np.zeros(1)
        return {
            "ready_s": round(ready, 1), "questions": len(questions), "errors": errors,
            "p50_ms": round(float(np.percentile(a, 50)), 1), "p95_ms": round(float(np.percentile(a, 95)), 1),
            "max_ms": round(float(a.max()), 1), "mean_ms": round(float(a.mean()), 1),
            "first10_ms": [round(x, 1) for x in lat[:10]],
            "server_took_p50_ms": round(float(np.percentile(took, 50)), 1) if took else None,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        logf.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.ask_cold", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", help="source tree to run (repeatable; default: this one)")
    ap.add_argument("--corpus", default=str(OPENQA / "corpus"))
    ap.add_argument("--questions", default=str(OPENQA / "questions.jsonl"))
    ap.add_argument("--limit", type=int, default=0, help="ask only the first N questions (0: all)")
    ap.add_argument("--every", type=int, default=1, help="ask every N-th question (a sample over all sets; default: all)")
    ap.add_argument("--skip-build-of", action="append", default=[], help="reuse DATA_DIR's index for the tree (TREE=DATA_DIR)")
    ap.add_argument("--work", help="where the data directories go (default: a temporary directory, kept)")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    trees = [Path(t).resolve() for t in (args.tree or [str(PROJECT_ROOT)])]
    questions = [json.loads(line)["question"] for line in Path(args.questions).read_text(encoding="utf-8").splitlines() if line.strip()]
    questions = questions[:: max(args.every, 1)]
    if args.limit:
        questions = questions[: args.limit]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="qiao-askcold-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("QIAO_DATA_DIR", None)
    reuse = dict(x.split("=", 1) for x in args.skip_build_of)
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "corpus": args.corpus, "loadavg_at_start": os.getloadavg(),
           "runs": []}
    for i, tree in enumerate(trees):
        data_dir = Path(reuse[str(tree)]) if str(tree) in reuse else work / f"t{i}"
        data_dir.mkdir(parents=True, exist_ok=True)
        run: dict = {"tree": str(tree), "data_dir": str(data_dir)}
        if str(tree) not in reuse:
            print(f"[{tree}] qiao index ...", file=sys.stderr, flush=True)
            run["build"] = build(tree, data_dir, Path(args.corpus), env)
            print(f"  {run['build']}", file=sys.stderr, flush=True)
        print(f"[{tree}] qiao serve + {len(questions)} cold /ask ...", file=sys.stderr, flush=True)
        run["ask"] = serve_and_ask(tree, data_dir, Path(args.corpus), questions, env)
        print(f"  {run['ask']}", file=sys.stderr, flush=True)
        out["runs"].append(run)
    out["loadavg_at_end"] = os.getloadavg()
    print("| tree | build s | chunks | units | unit files MB | /ask cold p50 ms | p95 ms | max ms | errors | first 10 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in out["runs"]:
        b = r.get("build") or {}
        a = r["ask"]
        print(f"| {r['tree']} | {b.get('seconds', '-')} | {b.get('chunks', '-')} | {b.get('units') or '-'} | "
              f"{round(b.get('unit_bytes', 0) / 2**20, 1) if b else '-'} | {a['p50_ms']} | {a['p95_ms']} | {a['max_ms']} | {a['errors']} | "
              f"{', '.join(str(int(x)) for x in a['first10_ms'])} |")
    print(json.dumps(out, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
