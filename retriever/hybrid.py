"""Hybrid retrieval: BM25 (with the cross-lingual glossary bridge) + dense vectors, fused."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from corpus.lang import detect_lang
from index.analysers import tokenize
from index.glossary import expand_query
from index.store import LoadedIndex
from retriever.filters import filter_mask
from retriever.fusion import reciprocal_rank_fusion
from retriever.models import MODES, Filters, Hit


def _top_rows(scores: np.ndarray, depth: int, mask: np.ndarray | None) -> np.ndarray:
    """Rows of the ``depth`` highest positive scores, best first (ties broken by row for determinism)."""
    if mask is not None:
        scores = np.where(mask, scores, 0.0)
    positive = np.flatnonzero(scores > 0)
    if positive.size == 0:
        return positive
    if positive.size > depth:
        part = np.argpartition(-scores[positive], depth - 1)[:depth]
        positive = positive[part]
    order = np.lexsort((positive, -scores[positive]))
    return positive[order]


@dataclass
class QueryAnalysis:
    text: str
    lang: str
    tokens: list[str]
    bridge: list[str]  # glossary tokens in the other language


class HybridRetriever:
    """``search(query, k, mode, filters) -> list[Hit]`` over one :class:`LoadedIndex`.

    Stateless apart from the index and the embedder, so one instance serves concurrent requests.
    """

    def __init__(self, index: LoadedIndex, embedder, settings):
        self.index = index
        self.embedder = embedder
        self.settings = settings

    def analyse(self, query: str) -> QueryAnalysis:
        return QueryAnalysis(query, detect_lang(query), tokenize(query), expand_query(query))

    def bm25_candidates(self, qa: QueryAnalysis, depth: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, all_scores)``: the top rows and the score array ``(n,)`` they came from."""
        scores = self.index.bm25.weighted_scores(qa.tokens, qa.bridge, self.settings.glossary_weight)
        return _top_rows(scores, depth, mask), scores

    def vector_candidates(self, query: str, depth: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)`` best first, cosine similarities."""
        qv = self.embedder.embed_queries([query])[0]
        return self.index.vectors.search(qv, depth, allowed=mask)

    def search(self, query: str, k: int = 10, mode: str = "hybrid", filters: Filters | None = None) -> list[Hit]:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        if self.index.size == 0:
            return []
        s = self.settings
        mask = filter_mask(self.index, filters)
        depth = max(s.candidate_depth, 3 * k)
        qa = self.analyse(query)

        bm25_rows = np.zeros(0, np.int64)
        bm25_all = None
        vec_rows, vec_scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
        if mode in ("bm25", "hybrid"):
            bm25_rows, bm25_all = self.bm25_candidates(qa, depth, mask)
        if mode in ("vector", "hybrid"):
            vec_rows, vec_scores = self.vector_candidates(query, depth, mask)

        bm25_rank = {int(r): i + 1 for i, r in enumerate(bm25_rows)}
        vec_rank = {int(r): i + 1 for i, r in enumerate(vec_rows)}
        vec_score = {int(r): float(v) for r, v in zip(vec_rows, vec_scores)}

        if mode == "bm25":
            ordered = [(int(r), float(bm25_all[r])) for r in bm25_rows]
        elif mode == "vector":
            ordered = [(int(r), float(v)) for r, v in zip(vec_rows, vec_scores)]
        else:
            fused = reciprocal_rank_fusion([bm25_rows, vec_rows], [s.weight_bm25, s.weight_vector], k=s.rrf_k)
            ordered = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))

        hits: list[Hit] = []
        kept_vecs: list[np.ndarray] = []
        chunks = self.index.chunks
        for row, score in ordered:
            if len(hits) >= k:
                break
            c = chunks[row]
            if self._is_near_duplicate(row, hits, kept_vecs):
                continue
            hits.append(
                Hit(
                    rank=len(hits) + 1,
                    chunk=c,
                    score=score,
                    bm25_score=None if bm25_all is None else float(bm25_all[row]),
                    vector_score=vec_score.get(row),
                    bm25_rank=bm25_rank.get(row),
                    vector_rank=vec_rank.get(row),
                    row=row,
                )
            )
        return hits

    def _is_near_duplicate(self, row: int, hits: list[Hit], kept_vecs: list[np.ndarray]) -> bool:
        """Same text, a mostly overlapping span of the same document, or a near-identical vector."""
        c = self.index.chunks[row]
        for h in hits:
            o = h.chunk
            if o.text == c.text:
                return True
            if o.doc_id == c.doc_id:
                overlap = min(o.end, c.end) - max(o.start, c.start)
                if overlap > 0 and overlap >= 0.5 * min(o.end - o.start, c.end - c.start):
                    return True
        if hits:
            v = self.index.vectors.reconstruct(np.array([row]))[0]
            if kept_vecs:
                sims = np.stack(kept_vecs) @ v
                if float(sims.max()) >= self.settings.dedup_threshold:
                    return True
            kept_vecs.append(v)
        else:
            kept_vecs.append(self.index.vectors.reconstruct(np.array([row]))[0])
        return False
