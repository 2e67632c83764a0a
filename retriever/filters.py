"""Facet filters as boolean row masks over a loaded index."""

from __future__ import annotations

import numpy as np

from index.store import LoadedIndex
from retriever.models import Filters


def filter_mask(index: LoadedIndex, filters: Filters | None) -> np.ndarray | None:
    """Bool mask ``(n_chunks,)`` of rows that pass ``filters``, or ``None`` when nothing is filtered."""
    if filters is None or filters.is_empty():
        return None
    mask = np.ones(index.size, dtype=bool)
    if filters.lang:
        mask &= np.isin(index.chunk_lang, list(filters.lang))
    if filters.doc_id:
        mask &= np.isin(index.chunk_doc, list(filters.doc_id))
    if filters.region:
        region_mask = np.zeros(index.size, dtype=bool)
        for r in filters.region:
            rows = index.region_rows.get(r)
            if rows is not None:
                region_mask[rows] = True
        mask &= region_mask
    if filters.date_from or filters.date_to:
        dates = index.chunk_date
        lo = int(filters.date_from.replace("-", "")) if filters.date_from else 0
        hi = int(filters.date_to.replace("-", "")) if filters.date_to else 99999999
        mask &= (dates > 0) & (dates >= lo) & (dates <= hi)  # undated chunks fail a date filter
    return mask
