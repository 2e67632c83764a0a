"""Scale-out benchmarks: ingest through Ray vs in process, and ``/search`` on milvus-lite vs FAISS.

    python -m qiao.eval.bench_backends [--corpus DIR] [--questions FILE] [--seconds 60] [--out eval/BENCH_BACKENDS.md]

Both on the openqa-dev corpus (``../shared/data/openqa-dev``: 317 documents, English and Chinese)
and its 510 questions, every step in a child process exactly as a user runs it:

1. **Ingest**: ``qiao index`` with an empty embedding cache, in process (FAISS backend), then the
   same with ``QIAO_RAY_ADDRESS=local`` (a local Ray cluster started by the command, one embedder
   actor per CPU). Wall time of the whole command, Ray's start-up included. Target: Ray <= 1.2x.
2. **Search latency**: the index built for each backend (``QIAO_BACKEND=faiss`` / ``milvus`` with
   embedded milvus-lite, embeddings from the cache of step 1), ``qiao serve`` on a loopback port,
   warm-up, then ``POST /search`` (hybrid, k=10) from one client, every request a distinct
   question. p50 / p95 of the HTTP round trip and the server's own ``took_ms``. Target: milvus-lite
   p50 <= 2x FAISS.

Results go to ``--out`` (markdown) and a JSON file beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qiao.eval.bench import _phase, machine_info, server_bench  # noqa: F401 - one HTTP load helper for all benches
from qiao.settings import PROJECT_ROOT

SHARED = PROJECT_ROOT.parent / "shared" / "data" / "openqa-dev"


def _qiao(args: list[str], env: dict, log) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "qiao.api.cli", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"qiao {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    log(f"  qiao {' '.join(args)}: {took:.1f} s")
    return took


def ingest(corpus: Path, work: Path, log=print) -> dict:
    out = {}
    base = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "QIAO_CORPUS_DIR": str(corpus), "QIAO_BACKEND": "faiss"}
    base.pop("QIAO_RAY_ADDRESS", None)
    for name, extra in (("in_process", {}), ("ray_local", {"QIAO_RAY_ADDRESS": "local"})):
        data = work / f"ingest-{name}"
        log(f"ingest {name}")
        out[name] = round(_qiao(["--data-dir", str(data), "index", "--quiet"], {**base, **extra}, log), 1)
    manifest = json.loads((work / "ingest-in_process" / "index" / "current" / "manifest.json").read_text())
    out["chunks"] = manifest["chunks"]
    out["ratio"] = round(out["ray_local"] / out["in_process"], 2)
    out["passages_per_s_in_process"] = round(out["chunks"] / out["in_process"], 1)
    return out


def latency(corpus: Path, questions: list[str], work: Path, seconds: float, log=print) -> dict:
    out = {}
    cache = work / "ingest-in_process" / "cache"
    for backend in ("faiss", "milvus"):
        data = work / f"serve-{backend}"
        data.mkdir(parents=True, exist_ok=True)
        if not (data / "cache").exists():
            os.symlink(cache, data / "cache")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "QIAO_CORPUS_DIR": str(corpus), "QIAO_BACKEND": backend}
        env.pop("QIAO_RAY_ADDRESS", None)
        log(f"search latency {backend}")
        _qiao(["--data-dir", str(data), "index", "--quiet"], env, log)
        old = {k: os.environ.get(k) for k in ("QIAO_BACKEND", "QIAO_CORPUS_DIR")}
        os.environ.update({"QIAO_BACKEND": backend, "QIAO_CORPUS_DIR": str(corpus)})  # server_bench passes os.environ on
        try:
            res = _search_only(data, questions, seconds, log)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        out[backend] = res
    out["p50_ratio"] = round(out["milvus"]["p50_ms"] / out["faiss"]["p50_ms"], 2)
    out["took_p50_ratio"] = round(out["milvus"]["took_p50_ms"] / out["faiss"]["took_p50_ms"], 2)
    return out


def _search_only(data: Path, questions: list[str], seconds: float, log) -> dict:
    """One-client /search phase through :func:`qiao.eval.bench.server_bench`'s server (its first phase)."""
    res = server_bench(data, questions, seconds, log=log)
    first = res["phases"][0]
    return {"p50_ms": first["p50_ms"], "p95_ms": first["p95_ms"], "took_p50_ms": first.get("took_p50_ms"),
            "requests": first["requests"], "rss_end_mb": res["rss_end_mb"]}


def report(res: dict) -> str:
    ing, lat = res["ingest"], res["latency"]
    lines = [
        "# Scale-out benchmarks (Milvus backend, Ray ingest)",
        "",
        f"Machine: {res['machine'].get('cpu', '?')}, {res['machine'].get('cores', '?')} cores; corpus {res['corpus']} "
        f"({ing['chunks']} chunks). `python -m qiao.eval.bench_backends`.",
        "",
        "## Ingest (`qiao index`, empty embedding cache)",
        "",
        "| path | seconds | passages/s |",
        "|---|---|---|",
        f"| in process | {ing['in_process']} | {ing['passages_per_s_in_process']} |",
        f"| Ray, local cluster (`QIAO_RAY_ADDRESS=local`) | {ing['ray_local']} | {round(ing['chunks'] / ing['ray_local'], 1)} |",
        f"| ratio Ray / in process (target <= 1.2) | {ing['ratio']} | |",
        "",
        "## `/search` latency (hybrid, k=10, one client, distinct questions)",
        "",
        "| backend | p50 ms | p95 ms | server took p50 ms | requests | server RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for b in ("faiss", "milvus"):
        r = lat[b]
        lines.append(f"| {b}{' (milvus-lite)' if b == 'milvus' else ''} | {r['p50_ms']} | {r['p95_ms']} | {r['took_p50_ms']} | {r['requests']} | {r['rss_end_mb']} |")
    lines += ["", f"p50 ratio milvus-lite / FAISS (target <= 2): **{lat['p50_ratio']}** (server-side took: {lat['took_p50_ratio']})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=SHARED / "corpus")
    ap.add_argument("--questions", type=Path, default=SHARED / "questions.jsonl")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--work", type=Path, default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--skip-ingest", action="store_true", help="reuse --work's ingest results (its cache) and only time /search")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "eval" / "BENCH_BACKENDS.md")
    args = ap.parse_args(argv)
    if not args.corpus.is_dir():
        print(f"bench_backends: corpus {args.corpus} not found (the shared dev data): pass --corpus", file=sys.stderr)
        return 2
    questions = [json.loads(line)["question"] for line in args.questions.read_text(encoding="utf-8").splitlines() if line.strip()]
    work = args.work or Path(tempfile.mkdtemp(prefix="qiao-bench-backends-"))
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "ingest.json"
    if args.skip_ingest and saved.is_file():
        ing = json.loads(saved.read_text())
    else:
        ing = ingest(args.corpus, work)
        saved.write_text(json.dumps(ing))
    res = {"machine": machine_info(), "corpus": str(args.corpus), "ingest": ing,
           "latency": latency(args.corpus, questions, work, args.seconds)}
    args.out.write_text(report(res) + "\n", encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
