"""Sentence relevance: embedding similarity plus lexical coverage of the question.

``score = cosine(question, sentence) + 0.5 * coverage + type bonus - region penalty``, where ``coverage`` is the
idf-weighted share of the question's content tokens (same analyser as BM25) found in the
sentence and its chunk context (heading, date); a token missing in the sentence may be
covered by its glossary equivalent in the other language, at ``bridge_factor``. Tokens that occur nowhere in the corpus ("Kymriah") keep their full
idf in the denominator: evidence cannot cover them, which is what abstention needs.

When the question names regions ("When did Tianjin pass ..."), a sentence about none of them
(neither named in it nor in its context: its timeline entry, or its whole news item) loses ``region_penalty``: a Shenzhen
regulation is not evidence for a Tianjin question however similar the wording.
"""

from __future__ import annotations

from typing import Sequence, TypeAlias

import numpy as np

from qiao.corpus.gazetteer import expand_with_parents
from qiao.index.analysers import tokenize
from qiao.index.backend import TermStats
from qiao.index.budget import check_budget
from qiao.qa.facts import evidence_date, figures
from qiao.qa.models import ScoredSentence, Sentence
from qiao.qa.question import Question

LEXICAL_WEIGHT = 0.5
BRIDGE_FACTOR = 1.0
REGION_PENALTY = 0.1
YEAR_PENALTY = 0.1
TYPE_BONUS = 0.1
BUDGET_EVERY = 64
"""Token sets scored between two checks of the request's time budget (:func:`lexical_scores`)."""
"""Added when a unit holds the kind of answer asked for: a date (its own or its timeline entry's)
for "when" questions, a figure for "how many" questions."""


IdfTable: TypeAlias = TermStats
"""Lucene-style idf of analysed tokens over the indexed chunks: the backend's
:meth:`~qiao.index.backend.SearchBackend.term_stats`."""


def sentence_tokens(s: Sentence) -> frozenset[str]:
    """Analysed tokens of the sentence and its context (heading, date)."""
    context = " ".join(p for p in (s.chunk.heading, s.chunk.date) if p)
    return frozenset(tokenize(f"{context}\n{s.text}" if context else s.text))


def coverage(q: Question, have: frozenset[str], idf: IdfTable, bridge_factor: float = BRIDGE_FACTOR) -> float:
    """idf-weighted share of the question's content tokens that ``have`` covers, 0..1.

    A token counts 1 when present; otherwise ``bridge_factor`` times the best share of one of
    its glossary equivalents present (so an English sentence covers 细胞治疗 through "cell
    therapy"). Tokens without an equivalent stay in the denominator: a Chinese question
    about 新加坡 is not covered by an English sentence that lacks Singapore.
    """
    total = covered = 0.0
    for t in q.tokens:
        w = idf.idf(t)
        total += w
        if t in have:
            covered += w
            continue
        best = 0.0
        for target in q.translations.get(t, ()):
            best = max(best, len(target & have) / len(target))
        covered += w * bridge_factor * best
    return covered / total if total > 0 else 0.0


def lexical_scores(q: Question, token_sets: Sequence[frozenset[str]], idf: IdfTable) -> np.ndarray:
    """``(n,)`` :func:`coverage` of the question by each token set (the request's time budget is checked
    every :data:`BUDGET_EVERY` sets: a 2,000-character question makes each set cost ~1,000 look-ups)."""
    out = np.zeros(len(token_sets), np.float32)
    for i, have in enumerate(token_sets):
        if i % BUDGET_EVERY == 0:
            check_budget()
        out[i] = coverage(q, have, idf)
    return out


def about_regions(s: Sentence, regions: Sequence[str]) -> bool:
    """Whether ``s`` is about one of ``regions`` (keys with ancestors, as in :class:`Question`)."""
    have = set(s.context_regions) | set(expand_with_parents(s.mentions))
    return not have.isdisjoint(regions)


def in_years(s: Sentence, years: Sequence[str]) -> bool:
    """Whether ``s`` is dated in one of ``years`` or names one; undated sentences pass."""
    d = evidence_date(s)
    if d is None or d[0][:4] in years:
        return True
    return any(y in s.text for y in years)


def answer_type_match(q: Question, s: Sentence) -> bool:
    """Whether ``s`` can answer the question's type (always true for factoid / list questions)."""
    if q.qtype == "date":
        d = evidence_date(s)
        return d is not None and d[1] != "release"
    if q.qtype == "quantity":
        return bool(figures(s.text))
    return True


def score_sentences(
    q: Question,
    q_vec: np.ndarray,
    sentences: Sequence[Sentence],
    vectors: np.ndarray,
    token_sets: Sequence[frozenset[str]],
    idf: IdfTable,
    lexical_weight: float = LEXICAL_WEIGHT,
    region_penalty: float = REGION_PENALTY,
    type_bonus: float = TYPE_BONUS,
    year_penalty: float = YEAR_PENALTY,
) -> list[ScoredSentence]:
    """Every sentence with its combined, semantic and lexical score (input order)."""
    if not sentences:
        return []
    sem = vectors @ np.asarray(q_vec, dtype=np.float32)
    lex = lexical_scores(q, token_sets, idf)
    region_ok = np.array([not q.regions or about_regions(s, q.regions) for s in sentences])
    year_ok = np.array([not q.years or in_years(s, q.years) for s in sentences])
    relevance = sem + lexical_weight * lex - region_penalty * ~region_ok - year_penalty * ~year_ok
    total = relevance
    if type_bonus and q.qtype in ("date", "quantity"):
        total = relevance + type_bonus * np.array([1.0 if answer_type_match(q, s) else 0.0 for s in sentences])
    return [
        ScoredSentence(s, float(t), float(c), float(x), float(r), bool(a and b))
        for s, t, c, x, r, a, b in zip(sentences, total, sem, lex, relevance, region_ok, year_ok)
    ]
