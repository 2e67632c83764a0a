"""Maximal marginal relevance: relevant evidence that does not repeat itself."""

from __future__ import annotations

import numpy as np


def mmr(
    relevance: np.ndarray,
    vectors: np.ndarray,
    k: int,
    lambda_: float = 0.7,
    candidates: list[int] | None = None,
    max_similarity: float | None = 0.95,
) -> list[int]:
    """Indices of up to ``k`` items chosen greedily by MMR, in selection order.

    ``relevance``: ``(n,)`` scores; ``vectors``: ``(n, dim)`` L2-normalised rows.
    Each step takes ``argmax lambda * rel(i) - (1 - lambda) * max_j sim(i, j)`` over the
    chosen ``j``. ``candidates`` restricts the pool (default: all). Items whose similarity
    to a chosen one is at least ``max_similarity`` are never taken (near-verbatim repeats,
    e.g. the same sentence in two documents).
    """
    pool = list(range(len(relevance))) if candidates is None else list(candidates)
    if k <= 0 or not pool:
        return []
    rel = np.asarray(relevance, dtype=np.float64)
    vecs = np.asarray(vectors, dtype=np.float32)
    chosen: list[int] = []
    max_sim = np.full(len(rel), -np.inf)
    remaining = set(pool)
    while remaining and len(chosen) < k:
        best, best_val = -1, -np.inf
        for i in sorted(remaining):
            penalty = 0.0 if not chosen else max(float(max_sim[i]), 0.0)
            val = lambda_ * rel[i] - (1.0 - lambda_) * penalty
            if val > best_val:
                best, best_val = i, val
        chosen.append(best)
        remaining.discard(best)
        sims = vecs[sorted(remaining)] @ vecs[best] if remaining else np.zeros(0)
        for i, s in zip(sorted(remaining), sims):
            max_sim[i] = max(max_sim[i], float(s))
        if max_similarity is not None:
            remaining = {i for i in remaining if max_sim[i] < max_similarity}
    return chosen
