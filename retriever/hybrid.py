"""Hybrid retrieval: BM25 (with the cross-lingual glossary and dictionary bridges) + dense vectors
(the first embedder and, when the index has its vectors, the second one), fused."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qiao.corpus.lang import detect_lang
from qiao.index.analysers import tokenize
from qiao.index.budget import check_budget
from qiao.index.dictionary import bridge_tokens
from qiao.index.dictionary import warm_in_background as warm_dictionary
from qiao.index.glossary import expand_query
from qiao.config import RetrievalConfig
from qiao.index.backend import SearchBackend
from qiao.index.embedders import Embedder
from qiao.retriever.filters import filter_mask
from qiao.retriever.fusion import SecondSignal, calibrated_vector, fuse
from qiao.retriever.models import EVAL_MODES, MODES, Filters, Hit
from qiao.settings import Settings


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
    dict_bridge: list[str] = field(default_factory=list)  # CC-CEDICT tokens (index/dictionary.py), not in tokens/bridge


@dataclass
class Candidates:
    """What each retriever proposed for one query (rows are chunk rows of the index, best first)."""

    qa: QueryAnalysis
    bm25_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    bm25_all: np.ndarray | None = None  # (n,) BM25 score of every row, None when BM25 did not run
    vec_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    vec_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # cosine, (len(vec_rows),)
    # vector/hybrid modes: the vector candidates of each language separately, [(lang, rows, cosines)]
    vec_lists: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)
    query_vector: np.ndarray | None = None
    # the second embedder (index/use_embedder.py), when the index has its vectors: its per-language lists
    vec_lists2: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)
    query_vector2: np.ndarray | None = None
    # cosines a remote backend returned with other scores (row -> cosine), read before the vectors
    cosines: dict[int, float] = field(default_factory=dict)


class HybridRetriever:
    """``search(query, k, mode, filters) -> list[Hit]`` over one :class:`SearchBackend`.

    Stateless apart from the index and the embedder, so one instance serves concurrent requests.
    """

    def __init__(self, index: SearchBackend, embedder: Embedder, config: RetrievalConfig | Settings):
        """``config``: the retrieval slice of the settings (a whole ``Settings`` is sliced here)."""
        self.index = index
        self.embedder = embedder
        self.config = config if isinstance(config, RetrievalConfig) else RetrievalConfig.of(config)
        self.languages: list[str] = index.languages
        if self.config.dictionary_weight > 0:
            warm_dictionary()

    def analyse(self, query: str) -> QueryAnalysis:
        gloss = expand_query(query)
        dict_terms = bridge_tokens(query, exclude=set(gloss)) if self.config.dictionary_weight > 0 else []
        return QueryAnalysis(query, detect_lang(query), tokenize(query), gloss, dict_terms)

    def bm25_candidates(self, qa: QueryAnalysis, depth: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, all_scores)``: the top rows and the score array ``(n,)`` they came from.

        Scores: the query's tokens + ``glossary_weight`` x its glossary bridge terms +
        ``dictionary_weight`` x its CC-CEDICT bridge terms, each set a separate BM25 query."""
        dw = self.config.dictionary_weight
        if hasattr(self.index, "lexical_search"):  # a remote backend (Milvus): top rows only, see below
            # one search: the score is linear in the query's term weights, so the three token sets
            # are one weighted query with exactly the combined score's top rows
            rows, top = self.index.lexical_search(
                qa.tokens, qa.bridge, self.config.glossary_weight, depth, mask, more=self._more(qa)
            )
            scores = np.zeros(self.index.size, np.float32)
            scores[rows] = top
            return rows, scores
        scores = self.index.lexical_scores(qa.tokens, qa.bridge, self.config.glossary_weight)
        if qa.dict_bridge and self.config.dictionary_weight > 0:
            extra = self.index.lexical_scores(qa.dict_bridge)
            scores = (scores + np.float32(dw) * extra).astype(np.float32)
        return _top_rows(scores, depth, mask), scores

    def _more(self, qa: QueryAnalysis) -> tuple[tuple[list[str], float], ...]:
        """The dictionary bridge as a further weighted token group (a remote backend's one search)."""
        dw = self.config.dictionary_weight
        return ((qa.dict_bridge, dw),) if qa.dict_bridge and dw > 0 else ()

    # --- the second embedder (index/use_embedder.py) ------------------------------------------
    @property
    def second_embedder(self) -> Embedder | None:
        """The second embedder when both it and its vectors in the index are there, else None."""
        second = getattr(self.embedder, "second", None)
        dim = getattr(self.index, "second_dim", None)
        return second if second is not None and dim is not None and second.dim == dim else None

    def second_candidates(
        self, query: str, depth: int, mask: np.ndarray | None, query_vector2: np.ndarray | None = None
    ) -> tuple[np.ndarray | None, list[tuple[str, np.ndarray, np.ndarray]]]:
        """``(query vector, [(lang, rows, cosines)])`` of the second embedder (``(None, [])`` without one)."""
        if getattr(self.index, "second_dim", None) is None:
            return None, []
        if query_vector2 is None:
            second = self.second_embedder
            if second is None:
                return None, []
            query_vector2 = second.embed_queries([query])[0]
        search = self.index.second_dense_search  # type: ignore[attr-defined]  # LoadedIndex extra
        if len(self.languages) <= 1:
            rows, scores = search(query_vector2, depth, allowed=mask)
            return query_vector2, [(self.languages[0] if self.languages else "", rows, scores)]
        out = []
        for lang in self.languages:
            if mask is not None and not (mask & (self.index.chunk_lang == lang)).any():
                continue
            rows, scores = search(query_vector2, depth, lang=lang, allowed=mask)
            if rows.size:
                out.append((lang, rows, scores))
        return query_vector2, out

    def _second_signal(self, cand: Candidates) -> SecondSignal | None:
        """The second embedder's part of the fusion for these candidates, or None without one."""
        if cand.query_vector2 is None or not cand.vec_lists2:
            return None
        qv2, vectors2 = cand.query_vector2, self.index.second_vectors  # type: ignore[attr-defined]
        f = self.config.fusion
        return SecondSignal(cand.vec_lists2, lambda rows: vectors2(rows) @ qv2, f.second_weight, f.second_weight_same, cand.qa.lang)

    def query_vector(self, query: str) -> np.ndarray:
        return self.embedder.embed_queries([query])[0]

    def vector_candidates(
        self, query: str, depth: int, mask: np.ndarray | None, query_vector: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)`` best first, cosine similarities. ``query_vector``: skip embedding (batch eval)."""
        qv = self.query_vector(query) if query_vector is None else query_vector
        return self.index.dense_search(qv, depth, allowed=mask)

    def vector_candidates_by_language(
        self, qv: np.ndarray, depth: int, mask: np.ndarray | None
    ) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """``[(lang, rows, cosines)]``: the top ``depth`` rows of each language of the index.

        One search on a one-language index; on a bilingual one, a search per language, because
        the embedder ranks the query's own language first and the other language's best rows
        may not be in a global top ``depth`` at all.
        """
        if len(self.languages) <= 1:
            rows, scores = self.index.dense_search(qv, depth, allowed=mask)
            return [(self.languages[0] if self.languages else "", rows, scores)]
        out = []
        for lang in self.languages:
            if mask is not None and not (mask & (self.index.chunk_lang == lang)).any():
                continue
            rows, scores = self.index.dense_search(qv, depth, lang=lang, allowed=mask)
            if rows.size:
                out.append((lang, rows, scores))
        return out

    def depth(self, k: int) -> int:
        """Candidates taken from each retriever for a request of ``k`` hits."""
        return max(self.config.candidate_depth, 3 * k)

    def candidates(
        self,
        query: str,
        k: int = 10,
        mode: str = "hybrid",
        mask: np.ndarray | None = None,
        query_vector: np.ndarray | None = None,
        query_vector2: np.ndarray | None = None,
    ) -> Candidates:
        """Each retriever's candidate list for ``query`` (empty for a retriever the mode does not use).

        ``mode`` may also be ``vector2`` (the second embedder alone; eval only)."""
        if mode not in EVAL_MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        depth = self.depth(k)
        qa = self.analyse(query)
        check_budget()  # a request out of time stops here, not after BM25 and fusion (index/budget.py)
        cand = Candidates(qa=qa)
        if mode == "vector2" or (mode == "hybrid" and self.config.fusion.second_on):
            cand.query_vector2, cand.vec_lists2 = self.second_candidates(query, depth, mask, query_vector2)
            if mode == "vector2":
                return cand
        if mode in ("bm25", "hybrid"):
            cand.bm25_rows, cand.bm25_all = self.bm25_candidates(qa, depth, mask)
            check_budget()
        if mode in ("vector", "hybrid") and self.config.fusion.method == "rrf":
            cand.vec_rows, cand.vec_scores = self.vector_candidates(query, depth, mask, query_vector)
        elif mode in ("vector", "hybrid"):
            qv = self.query_vector(query) if query_vector is None else query_vector
            cand.query_vector = qv
            cand.vec_lists = self.vector_candidates_by_language(qv, depth, mask)
            if len(cand.vec_lists) == 1:
                cand.vec_rows, cand.vec_scores = cand.vec_lists[0][1], cand.vec_lists[0][2]
            elif cand.vec_lists:  # one list by raw cosine, for the hits' vector ranks
                rows = np.concatenate([r for _l, r, _s in cand.vec_lists])
                scores = np.concatenate([s for _l, _r, s in cand.vec_lists])
                order = np.lexsort((rows, -scores))
                cand.vec_rows, cand.vec_scores = rows[order], scores[order]
        if mode == "hybrid" and cand.bm25_all is not None and hasattr(self.index, "lexical_scores_of"):
            # a backend that returned only its top BM25 rows (Milvus): the exact BM25 of every
            # other candidate (first and second embedder's), and the cosine of every candidate the
            # first embedder did not propose, each in one request restricted to those rows, so
            # fusion sees the same scores as with FAISS' full arrays
            second = np.asarray([r for _l, rows, _s in cand.vec_lists2 for r in rows.tolist()], np.int64)
            extra = np.setdiff1d(np.union1d(cand.vec_rows, second), cand.bm25_rows)
            if extra.size:
                cand.bm25_all[extra] = self.index.lexical_scores_of(
                    extra, qa.tokens, qa.bridge, self.config.glossary_weight, self._more(qa)
                )
            need_cos = np.setdiff1d(np.union1d(cand.bm25_rows, second), cand.vec_rows)
            if need_cos.size and cand.query_vector is not None and hasattr(self.index, "cosines_of"):
                cand.cosines = dict(zip(need_cos.tolist(), self.index.cosines_of(need_cos, cand.query_vector).tolist()))
        return cand

    def rank(
        self,
        query: str,
        k: int = 10,
        mode: str = "hybrid",
        filters: Filters | None = None,
        query_vector: np.ndarray | None = None,
        cand: Candidates | None = None,
        query_vector2: np.ndarray | None = None,
    ) -> list[tuple[int, float]]:
        """All candidate rows ordered by the mode's score, best first: ``[(row, score), ...]``.

        No near-duplicate removal (that is :meth:`search`'s job); the eval uses this with
        precomputed query vectors.
        """
        if self.index.size == 0:
            return []
        if cand is None:
            cand = self.candidates(query, k, mode, filter_mask(self.index, filters), query_vector, query_vector2)
        if mode == "vector2":
            scored = calibrated_vector(cand.vec_lists2, self.index.chunk_lang, self.config.fusion.lang_top)
            return sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))
        if mode == "bm25":
            bm25_all = cand.bm25_all
            assert bm25_all is not None  # bm25 mode always scores
            return [(int(r), float(bm25_all[r])) for r in cand.bm25_rows]
        if mode == "vector":
            if not cand.vec_lists:  # rrf setting: the raw cosine ranking
                return [(int(r), float(v)) for r, v in zip(cand.vec_rows, cand.vec_scores)]
            scored = calibrated_vector(cand.vec_lists, self.index.chunk_lang, self.config.fusion.lang_top)
            return sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))
        qv = cand.query_vector

        known = cand.cosines

        def cos_of(rows: np.ndarray) -> np.ndarray:
            if known and all(int(r) in known for r in rows):
                return np.array([known[int(r)] for r in rows], np.float32)
            return self.index.vectors(rows) @ qv

        fused = fuse(cand, self.index, self.config.fusion, cos_of, self._second_signal(cand))
        return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))

    def search(self, query: str, k: int = 10, mode: str = "hybrid", filters: Filters | None = None) -> list[Hit]:
        if mode not in EVAL_MODES:  # the API accepts MODES only; vector2 is for `qiao eval`
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        if self.index.size == 0:
            return []
        cand = self.candidates(query, k, mode, filter_mask(self.index, filters))
        ordered = self.rank(query, k, mode, cand=cand)
        bm25_all = cand.bm25_all
        bm25_rank = {int(r): i + 1 for i, r in enumerate(cand.bm25_rows)}
        vec_rank = {int(r): i + 1 for i, r in enumerate(cand.vec_rows)}
        vec_score = {int(r): float(v) for r, v in zip(cand.vec_rows, cand.vec_scores)}

        hits: list[Hit] = []
        kept_vecs: list[np.ndarray] = []
        chunks = self.index.chunks
        # the vectors the near-duplicate check reads, in one request (a remote backend: one round trip)
        head = np.array([r for r, _s in ordered[: 2 * k]], np.int64)
        vecs = dict(zip(head.tolist(), self.index.vectors(head))) if head.size else {}
        for row, score in ordered:
            if len(hits) >= k:
                break
            c = chunks[row]
            if self._is_near_duplicate(row, hits, kept_vecs, vecs.get(row)):
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

    def _is_near_duplicate(self, row: int, hits: list[Hit], kept_vecs: list[np.ndarray], v: np.ndarray | None = None) -> bool:
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
        if v is None:
            v = self.index.vectors(np.array([row]))[0]
        if kept_vecs and float((np.stack(kept_vecs) @ v).max()) >= self.config.dedup_threshold:
            return True
        kept_vecs.append(v)  # kept_vecs[i] is the vector of hits[i]
        return False
