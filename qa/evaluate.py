"""Scoring answers against the evaluation questions (``eval/questions/seed_qa.jsonl``).

Each question line::

    {"id", "question", "lang": "en"|"zh-hans"|"zh-hant", "type": "list"|"date"|"factoid",
     "answerable": bool, "cross_lingual": bool, "gold_docs": [source file],
     "evidence": [{"doc": source file, "text": exact substring of that document}],
     "answer_items": [[alias, ...], ...],        # every item must appear (aliases in both languages)
     "acceptable_items": [[alias, ...], ...]}    # list answers: also correct, but not required

Metrics (per question, then averaged by group):

* ``evidence_recall``: share of gold evidence spans overlapped by a cited span (answerable only);
* ``citation_exact``: share of citations whose quote equals the source file's slice (all);
* ``markers_ok``: every ``[n]`` in the answer has a citation and every citation is used;
* ``list_recall`` / ``list_precision``: answer regions vs required (and acceptable) items (list questions);
* ``answer_hit``: every required item appears in the answer text (non-list answerable questions);
* ``abstention_ok``: ``answerable`` flag equals the gold flag (all).
"""

from __future__ import annotations

import json
import re
import statistics
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from qiao.corpus.gazetteer import display_name
from qiao.index.analysers import to_simplified
from qiao.qa.models import Answer

DEFAULT_QUESTIONS = Path(__file__).resolve().parent.parent / "eval" / "questions" / "seed_qa.jsonl"


@dataclass(frozen=True)
class EvalQuestion:
    id: str
    question: str
    lang: str  # "en" | "zh-hans" | "zh-hant"
    type: str  # "list" | "date" | "factoid"
    answerable: bool
    cross_lingual: bool = False
    gold_docs: tuple[str, ...] = ()
    evidence: tuple[tuple[str, str], ...] = ()  # (source file, exact text)
    answer_items: tuple[tuple[str, ...], ...] = ()
    acceptable_items: tuple[tuple[str, ...], ...] = ()


def load_questions(path: Path = DEFAULT_QUESTIONS) -> list[EvalQuestion]:
    """Questions of a JSONL file; raises ``ValueError`` naming the line of a malformed one."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            out.append(
                EvalQuestion(
                    id=r["id"], question=r["question"], lang=r["lang"], type=r["type"], answerable=bool(r["answerable"]),
                    cross_lingual=bool(r.get("cross_lingual", False)),
                    gold_docs=tuple(r.get("gold_docs", ())),
                    evidence=tuple((e["doc"], e["text"]) for e in r.get("evidence", ())),
                    answer_items=tuple(tuple(i) for i in r.get("answer_items", ())),
                    acceptable_items=tuple(tuple(i) for i in r.get("acceptable_items", ())),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{n}: malformed question ({exc})") from None
    return out


def norm(s: str) -> str:
    """Matching form: NFKC, Simplified, lower case, no whitespace."""
    return re.sub(r"\s+", "", to_simplified(unicodedata.normalize("NFKC", s)).lower())


def item_in(aliases: Iterable[str], text: str) -> bool:
    t = norm(text)
    return any(norm(a) and norm(a) in t for a in aliases)


_MARKER_RE = re.compile(r"\[(\d+)\]")


@dataclass
class QuestionResult:
    q: EvalQuestion
    answer: Answer
    evidence_recall: float | None
    citation_exact: float | None
    markers_ok: bool
    list_recall: float | None
    list_precision: float | None
    answer_hit: float | None
    abstention_ok: bool
    missing_items: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "id": self.q.id, "question": self.q.question, "lang": self.q.lang, "type": self.q.type,
            "answerable": self.q.answerable, "predicted_answerable": self.answer.answerable,
            "evidence_score": self.answer.evidence_score, "evidence_recall": self.evidence_recall,
            "citation_exact": self.citation_exact, "markers_ok": self.markers_ok, "list_recall": self.list_recall,
            "list_precision": self.list_precision, "answer_hit": self.answer_hit, "abstention_ok": self.abstention_ok,
            "missing_items": self.missing_items, "took_ms": self.answer.took_ms, "answer": self.answer.answer,
        }


def score_answer(q: EvalQuestion, ans: Answer, documents: dict) -> QuestionResult:
    """Metrics of one answer. ``documents``: doc_id -> :class:`corpus.models.Document` of the index."""
    by_source = {d.source: d for d in documents.values()}
    cites = ans.citations
    exact = None
    if cites:
        ok = 0
        for c in cites:
            d = documents.get(c.doc_id)
            ok += bool(d is not None and 0 <= c.start < c.end <= len(d.text) and d.text[c.start : c.end] == c.quote)
        exact = ok / len(cites)
    used = {int(m) for m in _MARKER_RE.findall(ans.answer)}
    markers_ok = used == {c.id for c in cites}

    ev_recall = None
    if q.answerable and q.evidence:
        found = 0
        for source, text in q.evidence:
            d = by_source.get(source)
            if d is None:
                continue
            s = d.text.find(text)
            e = s + len(text)
            found += any(c.doc_id == d.doc_id and c.start < e and s < c.end for c in cites) and s >= 0
        ev_recall = found / len(q.evidence)

    list_recall = list_precision = answer_hit = None
    missing: list[str] = []
    if q.answerable and q.type == "list":
        names = [display_name(k) for k in ans.items] if ans.answerable else []
        hits = [item_in(aliases, " ".join(names)) for aliases in q.answer_items]
        list_recall = sum(hits) / len(hits) if hits else None
        missing = [a[0] for a, h in zip(q.answer_items, hits) if not h]
        if names:
            allowed = list(q.answer_items) + list(q.acceptable_items)
            list_precision = sum(any(item_in(a, n) for a in allowed) for n in names) / len(names)
        else:
            list_precision = 0.0
    elif q.answerable and q.answer_items:
        text = ans.answer if ans.answerable else ""
        hits = [item_in(aliases, text) for aliases in q.answer_items]
        answer_hit = float(all(hits))
        missing = [a[0] for a, h in zip(q.answer_items, hits) if not h]
    return QuestionResult(
        q, ans, ev_recall, exact, markers_ok, list_recall, list_precision, answer_hit,
        abstention_ok=ans.answerable == q.answerable, missing_items=missing,
    )


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(sum(vals) / len(vals), 3) if vals else None


METRICS = ("evidence_recall", "citation_exact", "list_recall", "list_precision", "answer_hit", "abstention_ok")


def summarise(results: list[QuestionResult]) -> list[dict]:
    """Rows ``{"group", "n", <metric>: mean or None}``: all, by type, by language, cross-lingual, unanswerable."""
    groups: list[tuple[str, Callable[[QuestionResult], bool]]] = [("all", lambda r: True)]
    for t in ("factoid", "date", "list"):
        groups.append((f"type={t}", lambda r, t=t: r.q.type == t and r.q.answerable))  # type: ignore[misc]
    groups.append(("unanswerable", lambda r: not r.q.answerable))
    for lang in ("en", "zh-hans", "zh-hant"):
        groups.append((f"lang={lang}", lambda r, lang=lang: r.q.lang == lang))  # type: ignore[misc]
    groups.append(("cross-lingual", lambda r: r.q.cross_lingual))
    rows = []
    for name, pred in groups:
        rs = [r for r in results if pred(r)]
        if not rs:
            continue
        row = {"group": name, "n": len(rs)}
        for m in METRICS:
            row[m] = _mean([float(getattr(r, m)) if isinstance(getattr(r, m), bool) else getattr(r, m) for r in rs])
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    heads = ["group", "n", "ev.recall", "cite.exact", "list.R", "list.P", "ans.hit", "abstain.acc"]
    lines = [" | ".join(f"{h:>13}" if i == 0 else f"{h:>10}" for i, h in enumerate(heads))]
    lines.append("-" * len(lines[0]))
    for r in rows:
        cells = [f"{r['group']:>13}", f"{r['n']:>10}"]
        for m in METRICS:
            v = r[m]
            cells.append(f"{'-' if v is None else f'{v:.3f}':>10}")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def calibrate(scores: list[tuple[float, bool]]) -> dict:
    """Abstention threshold from ``(best evidence score, answerable)`` pairs.

    Picks the cut with the highest abstention accuracy; among equally accurate cuts, the
    middle of the widest gap between neighbouring scores (the most robust place to cut).
    """
    if not scores:
        return {"threshold": 0.0, "accuracy": None}
    vals = sorted({s for s, _ in scores})
    cuts = [vals[0] - 1e-6] + [(a + b) / 2 for a, b in zip(vals, vals[1:])] + [vals[-1] + 1e-6]
    best: tuple[tuple[float, float], float] | None = None
    for i, t in enumerate(cuts):
        acc = sum((s >= t) == a for s, a in scores) / len(scores)
        lo = vals[i - 1] if i > 0 else t
        hi = vals[i] if i < len(vals) else t
        key = (acc, hi - lo)
        if best is None or key > best[0]:
            best = (key, t)
    assert best is not None  # cuts is never empty
    (acc, _gap), t = best
    ans = [s for s, a in scores if a]
    una = [s for s, a in scores if not a]
    return {
        "threshold": round(t, 4),
        "accuracy": round(acc, 3),
        "answerable": {"n": len(ans), "min": round(min(ans), 4) if ans else None, "median": round(statistics.median(ans), 4) if ans else None},
        "unanswerable": {"n": len(una), "max": round(max(una), 4) if una else None, "median": round(statistics.median(una), 4) if una else None},
        "false_abstentions": sum(1 for s in ans if s < t),
        "false_answers": sum(1 for s in una if s >= t),
    }


def _latency(times: list[float]) -> dict:
    times = sorted(times)
    if not times:
        return {"mean": None, "p95": None}
    return {"mean": round(statistics.mean(times), 1), "p95": round(times[min(len(times) - 1, int(0.95 * len(times)))], 1)}


def run_eval(engine, questions: list[EvalQuestion], k: int = 8) -> tuple[list[QuestionResult], dict]:
    """Ask every question; returns the per-question results and a report dict (table rows,
    latency, calibration figures for the abstention threshold)."""
    results = []
    repeat_ms = []
    for q in questions:
        ans = engine.ask(q.question, k=k)
        results.append(score_answer(q, ans, engine.index.documents))
        # asked again: the question's vector is now cached, so this is the pipeline's own cost
        repeat_ms.append(engine.ask(q.question, k=k).took_ms)
    report = {
        "questions": len(results),
        "threshold": engine.config.min_evidence,
        "summary": summarise(results),
        "markers_ok": all(r.markers_ok for r in results),
        "latency_ms": _latency([r.answer.took_ms for r in results]),
        "latency_ms_query_cached": _latency(repeat_ms),
        "calibration": calibrate([(r.answer.evidence_score, r.q.answerable) for r in results]),
    }
    return results, report
