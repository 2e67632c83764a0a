"""Loading and validating a retrieval dataset in BEIR format.

A dataset is a directory::

    corpus.jsonl      {"_id": str, "title": str, "text": str}   one document per line
    queries.jsonl     {"_id": str, "text": str}                 one query per line
    qrels/<split>.tsv query-id <TAB> corpus-id <TAB> score      header line first, score an int

Every problem is reported as :class:`DatasetError` naming the file and the 1-based line, so a
broken dataset is fixed in one look instead of failing deep inside an index build.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qiao.errors import Invalid
from qiao.index.store import sha256_file


class DatasetError(Invalid):
    """The dataset is missing a file or has a malformed line. ``str(exc)`` says ``file:line: what``."""


@dataclass(frozen=True)
class BeirDoc:
    doc_id: str
    title: str
    text: str


@dataclass
class BeirDataset:
    """A loaded dataset. ``qrels[query_id][doc_id] = graded relevance (int, > 0 is relevant)``.

    ``queries`` holds only the queries that have at least one judgement (BEIR evaluates those);
    ``unjudged_queries`` counts the rest.
    """

    name: str
    path: Path
    corpus: dict[str, BeirDoc]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    split: str = "test"
    unjudged_queries: int = 0
    corpus_sha256: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def relevant_pairs(self) -> int:
        return sum(1 for q in self.qrels.values() for s in q.values() if s > 0)


def _where(path: Path, line: int | None = None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


def _read_jsonl(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{_id: row}`` of a JSON-lines file; every row must be an object with string ``required`` fields."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (a BEIR dataset needs corpus.jsonl, queries.jsonl and qrels/<split>.tsv)")
    rows: dict[str, dict] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{_where(path, lineno)}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue  # a trailing blank line is harmless
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{_where(path, lineno)}: bad JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{_where(path, lineno)}: expected a JSON object, got {type(row).__name__}")
            for key in required:
                if key not in row:
                    raise DatasetError(f"{_where(path, lineno)}: missing field {key!r}")
            for key in required + optional:
                if key in row and row[key] is not None and not isinstance(row[key], (str, int)):
                    raise DatasetError(f"{_where(path, lineno)}: field {key!r} must be a string, got {type(row[key]).__name__}")
            rid = str(row["_id"]).strip()
            if not rid:
                raise DatasetError(f"{_where(path, lineno)}: empty '_id'")
            if rid in rows:
                raise DatasetError(f"{_where(path, lineno)}: duplicate _id {rid!r} (first on line {rows[rid]['__line']})")
            row["__line"] = lineno
            rows[rid] = row
    if not rows:
        raise DatasetError(f"{path}: no records")
    return rows


def _int_score(s: str) -> int | None:
    """``"1"`` -> 1, ``"1.0"`` -> 1; anything else (``"x"``, ``"0.5"``, ``"nan"``) -> None."""
    try:
        return int(s)
    except ValueError:
        pass
    try:
        f = float(s)
    except ValueError:
        return None
    return int(f) if f.is_integer() else None


def _read_qrels(path: Path, queries: dict[str, dict], corpus: dict[str, BeirDoc]) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (a BEIR dataset needs qrels/<split>.tsv)")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{_where(path, lineno)}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            cols = line.split("\t")
            if lineno == 1 and cols[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue  # the header line
            if len(cols) != 3:
                raise DatasetError(
                    f"{_where(path, lineno)}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(cols)}"
                )
            qid, did, score_s = (c.strip() for c in cols)
            score = _int_score(score_s)
            if score is None:
                raise DatasetError(f"{_where(path, lineno)}: score {score_s!r} is not an integer")
            if qid not in queries:
                raise DatasetError(f"{_where(path, lineno)}: query-id {qid!r} is not in queries.jsonl")
            if did not in corpus:
                raise DatasetError(f"{_where(path, lineno)}: corpus-id {did!r} is not in corpus.jsonl")
            qrels.setdefault(qid, {})[did] = score
    if not qrels:
        raise DatasetError(f"{path}: no judgements")
    return qrels


def load_beir(path: str | Path, split: str = "test") -> BeirDataset:
    """Load and check a BEIR dataset directory. Raises :class:`DatasetError` (``file:line: problem``)."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset directory not found")
    raw_corpus = _read_jsonl(root / "corpus.jsonl", ("_id", "text"), ("title",))
    corpus: dict[str, BeirDoc] = {}
    for did, row in raw_corpus.items():
        title = str(row.get("title") or "").strip()
        text = str(row["text"] or "")
        if not (title or text).strip():
            raise DatasetError(f"{_where(root / 'corpus.jsonl', row['__line'])}: document {did!r} has no text and no title")
        corpus[did] = BeirDoc(did, title, text)
    raw_queries = _read_jsonl(root / "queries.jsonl", ("_id", "text"))
    for qid, row in raw_queries.items():
        if not str(row["text"] or "").strip():
            raise DatasetError(f"{_where(root / 'queries.jsonl', row['__line'])}: query {qid!r} has empty text")
    qrels = _read_qrels(root / "qrels" / f"{split}.tsv", raw_queries, corpus)
    # a query whose judgements are all 0 cannot be scored (no relevant document): BEIR drops it too
    qrels = {q: d for q, d in qrels.items() if any(s > 0 for s in d.values())}
    if not qrels:
        raise DatasetError(f"{root / 'qrels' / f'{split}.tsv'}: no query has a relevant (score > 0) document")
    queries = {qid: str(raw_queries[qid]["text"]) for qid in raw_queries if qid in qrels}
    return BeirDataset(
        name=root.resolve().name,
        path=root,
        corpus=corpus,
        queries=queries,
        qrels=qrels,
        split=split,
        unjudged_queries=len(raw_queries) - len(queries),
        corpus_sha256=sha256_file(root / "corpus.jsonl"),
    )
