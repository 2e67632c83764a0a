"""``qiao eval-qa --openqa DIR``: answers on an open-QA set in the openqa-dev format, scored by its own ``score.py``.

The format (``../shared/data/openqa-dev``): ``corpus/`` (one document per ``.txt``), ``questions.jsonl``
(``{"id", "question", "lang", "set", "answerable", "answers", "gold_docs"}``) and ``score.py``, which scores a
JSONL of ``{"id", "response"}`` where ``response`` is a ``POST /ask`` response.

What runs:

1. the index of ``DIR/corpus`` in the data directory (``--data-dir`` / ``QIAO_DATA_DIR``) is built when it
   is missing or stale (same fingerprint check as ``qiao index --if-stale``), else reused;
2. every question goes through ``respond`` = :func:`qiao.api.routes_ask.answer_response` -- the function behind
   ``POST /ask`` (the engine of the serving snapshot, the ``AskResponse`` model), so what is scored is
   exactly what the API returns;
3. the responses are written as ``{"id", "response", "ms"}`` lines and ``score.py`` itself is run on
   them (its matching -- case, width, Traditional->Simplified folding, whitespace -- is not redone here);
4. a second table breaks the same per-question outcomes down by question type (as
   :func:`qiao.qa.question.question_type` sees it) and language, using ``score.py``'s own ``norm`` and
   ``abstained`` (imported from the file), plus the best-evidence scores for calibrating abstention.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from qiao.errors import Invalid


@dataclass
class OpenQARun:
    out_path: Path
    score_text: str  # score.py's output, verbatim
    breakdown: list[dict]  # rows by type / language (score.py's matching)
    records: list[dict] = field(default_factory=list)  # per question: id, set, lang, qtype, answerable, evidence_score, ok flags


def check_dir(path: Path) -> None:
    missing = [n for n in ("corpus", "questions.jsonl", "score.py") if not (path / n).exists()]
    if missing:
        raise Invalid(f"{path} is not an openqa-format directory: missing {', '.join(missing)}")


def load_score_module(path: Path):
    """``score.py`` as a module (its ``norm`` and ``abstained`` are the matching rules)."""
    spec = importlib.util.spec_from_file_location("openqa_score", path / "score.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ensure_index(service, log: Callable[[str], None]) -> None:
    """Build the index of ``service.settings.corpus_dir`` when missing or stale (then load it)."""
    from qiao.service.core import collect_documents

    result = collect_documents(service.settings)
    if not result.documents:
        raise Invalid(f"no loadable documents in {service.settings.corpus_dir}")
    reason = service.stale_reason(result.documents)
    if reason is not None:
        log(f"building the index of {service.settings.corpus_dir}: {reason}")
        service.build(result.documents, progress=False, log=log)
    service.load()


def run_openqa(
    service, path: Path, out_path: Path, respond: Callable, k: int = 8, limit: int | None = None,
    log: Callable[[str], None] = lambda s: None, every: int = 1,
) -> OpenQARun:
    """``respond(snapshot, service, question, k) -> (response dict, Answer)``: the ``/ask`` path
    (:func:`qiao.api.routes_ask.answer_response`, passed in by the CLI: eval does not import the API)."""
    from qiao.qa.pipeline import engine_for
    from qiao.qa.question import analyse_question

    check_dir(path)
    questions = [json.loads(line) for line in (path / "questions.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    questions = questions[::every]  # questions.jsonl is grouped by set: every N-th is a stratified sample
    if limit:
        questions = questions[:limit]
    ensure_index(service, log)
    snap = service.snapshot
    engine = engine_for(snap, service.settings)
    t0 = time.perf_counter()
    engine.warm()
    log(f"units split and embedded in {time.perf_counter() - t0:.1f}s")
    score = load_score_module(path)
    records = []
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        for i, q in enumerate(questions):
            t = time.perf_counter()
            response, answer = respond(snap, service, q["question"], k)
            ms = (time.perf_counter() - t) * 1000
            f.write(json.dumps({"id": q["id"], "response": response, "ms": round(ms, 1)}, ensure_ascii=False) + "\n")
            records.append(_record(score, q, response, answer, analyse_question(q["question"]).qtype))
            if (i + 1) % 50 == 0:
                log(f"{i + 1}/{len(questions)} questions")
    cmd = [sys.executable, str(path / "score.py"), str(out_path), "--questions", str(path / "questions.jsonl"),
           "--corpus", str(path / "corpus")]
    if limit or every > 1:  # score.py counts questions without a response as errors: score the answered ones only
        sub = out_path.with_suffix(".questions.jsonl")
        sub.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
        cmd[4] = str(sub)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise Invalid(f"score.py failed: {proc.stderr.strip()[-500:]}")
    return OpenQARun(out_path, proc.stdout, breakdown(records), records)


def _record(score, q: dict, response: dict, answer, qtype: str) -> dict:
    cits = response.get("citations") or []
    abst = bool(score.abstained(response))
    rec = {"id": q["id"], "set": q["set"], "lang": q["lang"], "qtype": qtype, "answerable": bool(q["answerable"]),
           "evidence_score": answer.evidence_score, "abst": abst, "n_cits": len(cits)}
    if q["answerable"]:
        gold = [score.norm(x) for x in q["answers"] if score.norm(x)]

        def has(s: str) -> bool:
            return any(x in score.norm(s) for x in gold)

        rec["first"] = bool(cits) and has(cits[0].get("quote", ""))
        rec["cited"] = any(has(c.get("quote", "")) for c in cits)
        gold_docs = set(q.get("gold_docs", ()))
        cited_langs = {("zh" if "zh" in str(c.get("source")) or "drcd" in str(c.get("source")) else "en") for c in cits}
        rec["cross"] = bool(cits) and q["lang"] not in cited_langs  # evidence cited only in the other language
        rec["doc"] = any(str(c.get("source")) in gold_docs for c in cits)
    return rec


def breakdown(records: list[dict]) -> list[dict]:
    """Rows ``{"group", "n", "first", "cited", "abst"}`` by type and by language (abst: the
    abstention rate -- wrong for answerable rows, right for the unanswerable row)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if not r["answerable"]:
            groups["unanswerable"].append(r)
            groups[f"unanswerable type={r['qtype']}"].append(r)
            continue
        groups["answerable"].append(r)
        groups[f"type={r['qtype']}"].append(r)
        groups[f"lang={r['lang']} set={r['set']}"].append(r)
    rows = []
    for name in sorted(groups, key=lambda g: (g.startswith("unanswerable"), g != "answerable", g)):
        rs = groups[name]
        row = {"group": name, "n": len(rs), "abst": sum(r["abst"] for r in rs) / len(rs)}
        if rs[0]["answerable"]:
            row["first"] = sum(r["first"] for r in rs) / len(rs)
            row["cited"] = sum(r["cited"] for r in rs) / len(rs)
        rows.append(row)
    return rows


def format_breakdown(rows: list[dict]) -> str:
    lines = [f"{'group':<34} {'n':>4} {'first':>6} {'cited':>6} {'abst':>6}"]
    for r in rows:
        f = f"{r['first']:.3f}" if "first" in r else "-"
        c = f"{r['cited']:.3f}" if "cited" in r else "-"
        lines.append(f"{r['group']:<34} {r['n']:>4} {f:>6} {c:>6} {r['abst']:>6.3f}")
    return "\n".join(lines)
