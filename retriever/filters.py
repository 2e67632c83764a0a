"""Facet filters as boolean row masks over a :class:`~qiao.index.backend.SearchBackend`."""

from __future__ import annotations

import datetime as dt

import numpy as np

from qiao.corpus.gazetteer import resolve_region

from qiao.index.backend import SearchBackend
from qiao.retriever.models import Filters


def filter_mask(index: SearchBackend, filters: Filters | None) -> np.ndarray | None:
    """Bool mask ``(n_chunks,)`` of rows that pass ``filters``, or ``None`` when nothing is filtered."""
    if filters is None or filters.is_empty():
        return None
    return index.select_rows(
        lang=filters.lang, doc_id=filters.doc_id, region=filters.region, date_from=filters.date_from, date_to=filters.date_to
    )


# --- validation shared by every front end (HTTP schemas, CLI, LangChain retriever) ---------------


def check_iso_date(value: str | None) -> str | None:
    """``value`` if it is a real ``YYYY-MM-DD`` date (or None); else ValueError saying what to write."""
    if value is None:
        return None
    try:
        if isinstance(value, str) and len(value) == 10:
            return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        pass
    raise ValueError(f"{value!r} is not a date: use YYYY-MM-DD, e.g. 2023-07-27")


def resolve_region_names(names: list[str] | None) -> list[str] | None:
    """Region names in any language → canonical gazetteer keys; ValueError naming an unknown one."""
    if names is None:
        return None
    out = []
    for name in names:
        key = resolve_region(name) if isinstance(name, str) and name.strip() else None
        if key is None:
            raise ValueError(f"unknown region {name!r}: use a Chinese province, city or pilot zone name, e.g. Tianjin or 天津")
        out.append(key)
    return out


def check_date_range(date_from: str | None, date_to: str | None) -> None:
    if date_from and date_to and date_from > date_to:
        raise ValueError(f"date_from {date_from} is after date_to {date_to}")
