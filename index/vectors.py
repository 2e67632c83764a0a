"""Dense vectors in FAISS: exact inner product (flat) for small corpora, HNSW above a threshold.

Restricted searches (a language, a filter) pass FAISS an ID selector. Building an
``IDSelectorBatch`` over half of a 100k-row index costs ~9 ms and searching with it ~0.5 ms, so
selectors for a fixed row set (one language) are built once and cached by key.
"""

from __future__ import annotations

from pathlib import Path

import threading

import faiss
import numpy as np

HNSW_EF_CONSTRUCTION = 80


class VectorIndex:
    """FAISS index whose ids are chunk row numbers ``0..n-1``; vectors are L2-normalised so IP = cosine."""

    def __init__(self, index: faiss.Index, ef_search: int):
        self.index = index
        self.ef_search = ef_search
        """HNSW search depth; a search of ``k`` rows uses ``max(k, ef_search)``."""
        if isinstance(index, faiss.IndexHNSWFlat):
            index.hnsw.efSearch = ef_search
        # (key, k) -> FAISS search parameters; key -> the selector they point to (params keep a raw pointer)
        self._params: dict[tuple[object, int], faiss.SearchParameters] = {}
        self._selectors: dict[object, faiss.IDSelector] = {}
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def kind(self) -> str:
        return "hnsw" if isinstance(self.index, faiss.IndexHNSWFlat) else "flat"

    @classmethod
    def build(cls, vectors: np.ndarray, *, hnsw_threshold: int, hnsw_m: int, ef_search: int) -> "VectorIndex":
        """``vectors``: ``(n, dim)`` float32, normalised."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = vectors.shape
        index: faiss.Index
        if n > hnsw_threshold:
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        else:
            index = faiss.IndexFlatIP(dim)
        if n:
            index.add(vectors)
        return cls(index, ef_search)

    def _search_params(self, sel: faiss.IDSelector, k: int) -> faiss.SearchParameters:
        if self.kind == "hnsw":
            # (faiss' bundled stubs lack the search-parameter keyword arguments)
            return faiss.SearchParametersHNSW(sel=sel, efSearch=max(k, self.ef_search))  # type: ignore[attr-defined]
        return faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None, cache_key: object | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows for one query vector ``(dim,)``.

        ``allowed``: optional bool mask ``(n,)``; only those rows are returned. ``cache_key``: the
        mask is a fixed row set (e.g. one language): its selector is built once and reused.
        Returns ``(ids, scores)``, each ``(m,)`` with ``m <= k``, best first.
        """
        if self.size == 0 or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        k = int(min(k, self.size))
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        params = None
        if allowed is not None:
            if cache_key is not None:
                params = self._cached_params(cache_key, allowed, k)
            else:
                if not allowed.any():
                    return np.zeros(0, np.int64), np.zeros(0, np.float32)
                params = self._search_params(faiss.IDSelectorBatch(np.flatnonzero(allowed).astype(np.int64)), k)
        scores, ids = self.index.search(q, k, params=params) if params is not None else self.index.search(q, k)
        keep = ids[0] >= 0
        return ids[0][keep].astype(np.int64), scores[0][keep]

    def _cached_params(self, key: object, allowed: np.ndarray, k: int) -> faiss.SearchParameters:
        with self._lock:
            params = self._params.get((key, k))
            if params is None:
                sel = self._selectors.get(key)
                if sel is None:
                    sel = faiss.IDSelectorBatch(np.flatnonzero(allowed).astype(np.int64))
                    self._selectors[key] = sel
                params = self._search_params(sel, k)
                self._params[(key, k)] = params
            return params

    def add(self, vectors: np.ndarray) -> None:
        """Append ``(m, dim)`` normalised vectors as rows ``n..n+m-1``."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors):
            self.index.add(vectors)
        self._forget_selectors()

    def remove(self, rows: np.ndarray) -> None:
        """Remove ``rows``; the rest are renumbered in order (flat: in place; HNSW: rebuilt, it
        cannot delete)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        if self.kind == "hnsw":
            keep = np.setdiff1d(np.arange(self.size, dtype=np.int64), rows)
            m = int(self.index.hnsw.nb_neighbors(1))  # type: ignore[attr-defined]  # an HNSW index (kind)
            kept = self.reconstruct(keep)
            index = faiss.IndexHNSWFlat(self.dim, m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = self.ef_search
            if len(kept):
                index.add(kept)
            self.index = index
        else:
            self.index.remove_ids(faiss.IDSelectorBatch(rows))
        self._forget_selectors()

    def _forget_selectors(self) -> None:
        with self._lock:
            self._params.clear()
            self._selectors.clear()

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of the given rows, ``(len(ids), dim)``."""
        if len(ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.index.reconstruct_batch(np.asarray(ids, dtype=np.int64))

    def save(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, ef_search: int | None = None) -> "VectorIndex":
        """``ef_search``: HNSW search depth (``Settings.hnsw_ef_search``); None keeps the one saved
        with the index (the build's setting)."""
        index = faiss.read_index(str(path))
        if ef_search is None:
            ef_search = int(index.hnsw.efSearch) if isinstance(index, faiss.IndexHNSWFlat) else 0
        return cls(index, ef_search)
