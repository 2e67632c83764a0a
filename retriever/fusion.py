"""Rank fusion of the BM25 and vector candidate lists."""

from __future__ import annotations

import numpy as np


def reciprocal_rank_fusion(
    ranked_lists: list[np.ndarray], weights: list[float], k: int = 60
) -> dict[int, float]:
    """Weighted RRF: ``score(d) = sum_i w_i / (k + rank_i(d))`` with 1-based ranks.

    ``ranked_lists``: row ids, best first, one array per retriever.
    Returns ``{row: fused score}``.
    """
    fused: dict[int, float] = {}
    for rows, w in zip(ranked_lists, weights):
        if w <= 0:
            continue
        for rank, row in enumerate(rows.tolist(), start=1):
            fused[row] = fused.get(row, 0.0) + w / (k + rank)
    return fused
