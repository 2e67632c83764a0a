"""Interleaved A/B timing of ``HybridRetriever.search(query, k=10)`` with and without issue 11's
signals (second embedder + dictionary bridge), the query embedded every time.

    python -m eval.latency_ab DATASET_DIR [--n 100]

A and B alternate query by query on the same eval index, so load from other processes on a
shared machine hits both alike; the ratio of the medians is what eval/RESULTS.md reports. CPU time
of the process (all its threads) is printed too: on a loaded machine it is the steadier figure.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from qiao.eval.beir import load_beir
from qiao.eval.run import ensure_index, sample_queries
from qiao.index.embedders import make_embedder
from qiao.retriever.hybrid import HybridRetriever
from qiao.settings import Settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.latency_ab")
    ap.add_argument("dataset")
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args(argv)
    settings = Settings()
    ds = load_beir(args.dataset)
    emb = make_embedder(settings, settings.cache_dir)
    index, _ = ensure_index(ds, settings, emb, progress=False)
    new = HybridRetriever(index, emb, settings)
    old_settings = settings.model_copy(update={"fusion_second_weight": 0.0, "dictionary_weight": 0.0})
    old = HybridRetriever(index, emb, old_settings)
    texts = [ds.queries[q] for q in sample_queries(ds, args.n, seed=7)]
    new.search("warm up", k=10)  # loads the USE weights and the dictionary
    old.search("warm up", k=10)
    times: dict[str, list[float]] = {"before": [], "after": []}
    cpu: dict[str, list[float]] = {"before": [], "after": []}
    for t in texts:
        for name, retr in (("before", old), ("after", new)):
            emb.forget_queries([t])  # a cold query, as /search sees it
            if emb.second is not None:
                emb.second.forget_queries([t])
            c0, t0 = time.process_time(), time.perf_counter()
            retr.search(t, k=10)
            times[name].append((time.perf_counter() - t0) * 1000)
            cpu[name].append((time.process_time() - c0) * 1000)
    p50 = {k: float(np.percentile(v, 50)) for k, v in times.items()}
    p95 = {k: float(np.percentile(v, 95)) for k, v in times.items()}
    c50 = {k: float(np.percentile(v, 50)) for k, v in cpu.items()}
    print(f"{ds.name}: search() wall p50 before {p50['before']:.1f} ms, after {p50['after']:.1f} ms "
          f"(x{p50['after'] / p50['before']:.2f}); p95 {p95['before']:.1f} -> {p95['after']:.1f} ms; "
          f"CPU p50 {c50['before']:.1f} -> {c50['after']:.1f} ms (x{c50['after'] / c50['before']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
