"""`qiao eval-qa --openqa DIR`: a small set in the openqa-dev format, answered through the /ask code path
and scored by the set's own score.py (copied from ../shared/data/openqa-dev when it is there)."""

from __future__ import annotations

import json
import shutil

import pytest

from qiao.settings import PROJECT_ROOT

SCORE_PY = next(
    (p / "shared" / "data" / "openqa-dev" / "score.py" for p in PROJECT_ROOT.parents
     if (p / "shared" / "data" / "openqa-dev" / "score.py").exists()),
    PROJECT_ROOT.parent / "shared" / "data" / "openqa-dev" / "score.py",
)
"""The set's score.py in the shared/ folder beside the checkout (or beside a parent: git worktrees)."""

DOCS = {
    "lake-en.txt": "Lake Tessel\n\nLake Tessel was drained in 1932 to make farmland. The work took eleven years and cost four million guilders.\n",
    "lake-zh.txt": "泰塞尔湖\n\n泰塞尔湖于1932年被排干，改造成农田。这项工程历时十一年。\n",
    "bells-en.txt": "The bells of Arnvik\n\nThe cathedral of Arnvik has nine bells. The largest bell, Great Olaf, was cast in 1489.\n",
}
QUESTIONS = [
    {"id": "a1", "question": "When was Lake Tessel drained?", "lang": "en", "set": "toy-en", "answerable": True,
     "answers": ["1932"], "gold_docs": ["lake-en.txt", "lake-zh.txt"]},
    {"id": "a2", "question": "阿恩维克大教堂有几口钟？", "lang": "zh", "set": "toy-zh", "answerable": True,
     "answers": ["nine", "九"], "gold_docs": ["bells-en.txt"]},
    {"id": "u1", "question": "Who designed the harbour lighthouse of Valparaíso?", "lang": "en", "set": "unanswerable",
     "answerable": False, "answers": [], "gold_docs": []},
]


@pytest.fixture()
def openqa_dir(tmp_path):
    if not SCORE_PY.exists():
        pytest.skip(f"{SCORE_PY} not present (the shared openqa-dev set)")
    root = tmp_path / "toy-openqa"
    (root / "corpus").mkdir(parents=True)
    for name, text in DOCS.items():
        (root / "corpus" / name).write_text(text, encoding="utf-8")
    (root / "questions.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")
    shutil.copy(SCORE_PY, root / "score.py")
    return root


def test_eval_qa_openqa_answers_through_ask_and_prints_score_py_metrics(openqa_dir, tmp_path, capsys, shared_cache_dir):
    from qiao.api import cli

    data = tmp_path / "data"
    (data / "cache").mkdir(parents=True)
    src = shared_cache_dir / "embeddings.sqlite"
    if src.exists():  # reuse the session's embeddings
        shutil.copy(src, data / "cache" / "embeddings.sqlite")
    out = tmp_path / "responses.jsonl"
    assert cli.main(["--data-dir", str(data), "eval-qa", "--openqa", str(openqa_dir), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "openqa: first=" in text and "exact=1.0000" in text  # score.py's own last line
    assert "type=" in text and "lang=" in text  # the breakdown by type and language
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [x["id"] for x in lines] == ["a1", "a2", "u1"]
    for x in lines:  # each response is a /ask response body
        assert {"question", "answer", "answerable", "citations", "hits", "took_ms"} <= set(x["response"])
        for c in x["response"]["citations"]:
            doc = (openqa_dir / "corpus" / c["source"]).read_text(encoding="utf-8")
            assert doc[c["start"] : c["end"]] == c["quote"]
    a1 = lines[0]["response"]
    assert a1["answerable"] and "1932" in a1["citations"][0]["quote"]
    # a second run reuses the index built in the data dir
    assert cli.main(["--data-dir", str(data), "eval-qa", "--openqa", str(openqa_dir), "--out", str(out)]) == 0
    assert "building the index" not in capsys.readouterr().err


def test_eval_qa_openqa_rejects_a_directory_that_is_not_the_format(tmp_path, capsys):
    from qiao.api import cli

    (tmp_path / "x").mkdir()
    assert cli.main(["--data-dir", str(tmp_path / "d"), "eval-qa", "--openqa", str(tmp_path / "x")]) == 2
    assert "missing corpus, questions.jsonl, score.py" in capsys.readouterr().err
