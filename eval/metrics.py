"""Retrieval metrics through ``ir-measures`` (trec_eval's definitions via pytrec_eval), not hand-written.

Shapes:
    qrels: ``{query_id: {doc_id: relevance int}}``
    run:   ``{query_id: [doc_id, ...]}``  best first (a ranking, not scores)

A ranking is turned into descending integer scores before it reaches trec_eval, because
trec_eval re-sorts by score and breaks ties by doc id: equal fused scores must not reorder
what the retriever returned. Queries with no results count as 0 (they are added to the run
as empty), so a retriever cannot look better by returning nothing.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import ir_measures
from ir_measures import RR, R, nDCG

METRICS: dict[str, object] = {
    "nDCG@10": nDCG @ 10,
    "Recall@10": R @ 10,
    "Recall@100": R @ 100,
    "MRR@10": RR @ 10,
}
"""Our names -> ir-measures measures. MRR@10 is trec_eval's reciprocal rank cut at 10."""


def ranking_to_run(ranking: Sequence[str]) -> dict[str, float]:
    """``[d1, d2, ...]`` -> ``{d1: n, d2: n-1, ...}``: strictly decreasing scores keep the order."""
    n = len(ranking)
    out: dict[str, float] = {}
    for i, d in enumerate(ranking):
        out.setdefault(d, float(n - i))  # a repeated doc keeps its best position
    return out


def per_query(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """``{query_id: {metric name: value}}`` for every judged query (missing/empty rankings score 0)."""
    judged = {q: dict(d) for q, d in qrels.items() if any(s > 0 for s in d.values())}
    by_measure = {m: name for name, m in METRICS.items()}
    out: dict[str, dict[str, float]] = {q: {name: 0.0 for name in METRICS} for q in judged}
    scored_run = {q: ranking_to_run(run.get(q, ())) for q in judged}
    scored_run = {q: r for q, r in scored_run.items() if r}  # trec_eval skips empty runs; they stay 0
    if scored_run:
        for m in ir_measures.iter_calc(list(METRICS.values()), judged, scored_run):
            out[m.query_id][by_measure[m.measure]] = float(m.value)
    return out


def aggregate(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Mean of each metric over all judged queries: ``{"nDCG@10": float, "Recall@10": ..., ...}``."""
    pq = per_query(qrels, run)
    if not pq:
        return {name: 0.0 for name in METRICS}
    return {name: sum(v[name] for v in pq.values()) / len(pq) for name in METRICS}
