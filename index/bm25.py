"""BM25 over analysed tokens, with bm25s (sparse matrices, scores for all documents at once)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import bm25s
import numpy as np

from qiao.index.backend import BM25_B, BM25_K1, TermStats

# bm25s warns on every empty query; we handle empty queries ourselves.
logging.getLogger("bm25s").setLevel(logging.ERROR)


class BM25Index:
    """Thin wrapper over :class:`bm25s.BM25` that takes token lists and returns dense score arrays."""

    def __init__(self, model: bm25s.BM25, n_docs: int):
        self.model = model
        self.n_docs = n_docs
        self._stats: TermStats | None = None

    @classmethod
    def build(cls, corpus_tokens: Sequence[Sequence[str]], k1: float = BM25_K1, b: float = BM25_B) -> "BM25Index":
        model = bm25s.BM25(k1=k1, b=b, method="lucene")
        # an empty token list still needs a row, or document numbering would shift
        model.index([list(t) for t in corpus_tokens], show_progress=False)
        return cls(model, len(corpus_tokens))

    def scores(self, tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every document for one query. Shape ``(n_docs,)``, float32."""
        ids = self.model.get_tokens_ids(list(tokens))
        if not ids:
            return np.zeros(self.n_docs, dtype=np.float32)
        return np.asarray(self.model.get_scores_from_ids(ids), dtype=np.float32)

    def weighted_scores(self, tokens: Sequence[str], extra: Sequence[str] = (), extra_weight: float = 0.0) -> np.ndarray:
        """``scores(tokens) + extra_weight * scores(extra)``: query terms plus down-weighted bridge terms."""
        out = self.scores(tokens)
        if extra and extra_weight > 0:
            out = out + np.float32(extra_weight) * self.scores(extra)
        return out

    def term_stats(self) -> TermStats:
        """Document frequency of every vocabulary token, read from the sparse score matrix
        (bm25s stores it column-per-token in CSC form: ``indptr[t+1] - indptr[t]`` rows hold ``t``)."""
        if self._stats is None:
            model = self.model
            self._stats = TermStats(
                n=int(self.n_docs),
                vocab=dict(model.vocab_dict),
                doc_freq=np.diff(np.asarray(model.scores["indptr"])).astype(np.int64),
                k1=float(getattr(model, "k1", BM25_K1)),
            )
        return self._stats

    def save(self, directory: Path) -> None:
        self.model.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: Path, n_docs: int) -> "BM25Index":
        model = bm25s.BM25.load(str(directory), mmap=False, show_progress=False, verbosity=0)
        if int(model.scores["num_docs"]) != n_docs:
            raise ValueError(f"BM25 index has {model.scores['num_docs']} documents, manifest says {n_docs}")
        return cls(model, n_docs)
