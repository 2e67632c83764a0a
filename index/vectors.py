"""Dense vectors in FAISS: exact inner product (flat) for small corpora, HNSW above a threshold."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np


class VectorIndex:
    """FAISS index whose ids are chunk row numbers ``0..n-1``; vectors are L2-normalised so IP = cosine."""

    def __init__(self, index: faiss.Index):
        self.index = index

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
    def build(cls, vectors: np.ndarray, hnsw_threshold: int = 50_000, hnsw_m: int = 32, ef_search: int = 128) -> "VectorIndex":
        """``vectors``: ``(n, dim)`` float32, normalised."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = vectors.shape
        if n > hnsw_threshold:
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.hnsw.efSearch = ef_search
        else:
            index = faiss.IndexFlatIP(dim)
        if n:
            index.add(vectors)
        return cls(index)

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows for one query vector ``(dim,)``.

        ``allowed``: optional bool mask ``(n,)``; only those rows are returned.
        Returns ``(ids, scores)``, each ``(m,)`` with ``m <= k``, best first.
        """
        if self.size == 0 or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        k = min(k, self.size)
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        params = None
        if allowed is not None:
            if not allowed.any():
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            sel = faiss.IDSelectorBatch(np.flatnonzero(allowed).astype(np.int64))
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(k, 128)) if self.kind == "hnsw" else faiss.SearchParameters(sel=sel)
        scores, ids = self.index.search(q, k, params=params) if params is not None else self.index.search(q, k)
        keep = ids[0] >= 0
        return ids[0][keep].astype(np.int64), scores[0][keep]

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of the given rows, ``(len(ids), dim)``."""
        if len(ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.index.reconstruct_batch(np.asarray(ids, dtype=np.int64))

    def save(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path) -> "VectorIndex":
        return cls(faiss.read_index(str(path)))
