"""Build the passage corpus of the ``seed`` BEIR set from the default corpus (corpus/documents).

    python -m eval.datasets.make_seed [--check]

Why passages, and not chunk ids or whole documents, as the unit that queries are judged against:

* chunk ids (``<doc_id>:<ordinal>``) change whenever chunk size or overlap change, and those are
  settings we tune on this very set, so chunk-level qrels would silently go stale;
* the default corpus has five documents, so document-level qrels would make Recall@10 = 1 for
  everything and measure nothing.

So each document is cut into stable, human-meaningful passages by the document's own structure,
independently of the chunker: a timeline (two or more date lines) into dated entries, each
titled by the region heading it sits under; any other document into its paragraphs (lines of
at least ``MIN_PARAGRAPH_CHARS`` characters; titles, image placeholders and navigation lines
are dropped). Passage id: ``<file prefix>-<kind><nn>``, e.g. ``004-e07`` or ``002-p01``.
The eval indexes these passages with the production chunker like any BEIR corpus.

``--check`` verifies that ``eval/datasets/seed/corpus.jsonl`` is what the documents give now
(the qrels point at those ids, so a corpus change must be reviewed, not regenerated blindly).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qiao.corpus.cleaning import clean_span
from qiao.corpus.loader import load_documents
from qiao.corpus.metadata import extract_news_source, is_date_line
from qiao.settings import PROJECT_ROOT

SEED_DIR = Path(__file__).resolve().parent / "seed"
MIN_PARAGRAPH_CHARS = 60
HEADING_MAX_CHARS = 40


def _lines(text: str) -> list[str]:
    out = []
    pos = 0
    for raw in text.splitlines(keepends=True):
        line = clean_span(text, pos, pos + len(raw)).strip()
        pos += len(raw)
        if line:
            out.append(line)
    return out


def _is_heading(line: str, next_line: str | None) -> bool:
    """A short unpunctuated line right before a date line (a region heading in a timeline)."""
    return (
        next_line is not None
        and is_date_line(next_line) is not None
        and is_date_line(line) is None
        and len(line) <= HEADING_MAX_CHARS
        and line[-1] not in ".。!！?？;；:：,，、"
    )


def passages(text: str, prefix: str, title: str) -> list[dict]:
    """BEIR rows ``{"_id", "title", "text"}`` of one document."""
    lines = _lines(text)
    dated = sum(1 for ln in lines if is_date_line(ln))
    out: list[dict] = []
    if dated >= 2:
        heading = title
        entry: list[str] = []

        def flush():
            if entry:
                out.append({"_id": f"{prefix}-e{len(out) + 1:02d}", "title": heading, "text": "\n".join(entry)})

        intro: list[str] = []
        for i, ln in enumerate(lines):
            nxt = lines[i + 1] if i + 1 < len(lines) else None
            nxt2 = lines[i + 2] if i + 2 < len(lines) else None
            if nxt is not None and _is_heading(nxt, nxt2) and _is_heading(ln, nxt2):
                continue  # a section heading over a region heading ("Local level" / "Shenzhen, ...")
            if _is_heading(ln, nxt):
                flush()
                entry = []
                heading = ln
            elif is_date_line(ln):
                flush()
                entry = [ln]
            elif entry:
                entry.append(ln)
            elif len(ln) >= MIN_PARAGRAPH_CHARS:
                intro.append(ln)
        flush()
        if intro:  # the text before the first entry, as one passage at the front
            out.insert(0, {"_id": f"{prefix}-intro", "title": title, "text": "\n".join(intro)})
        return out
    for ln in lines[1:]:  # the first line is the title
        if len(ln) < MIN_PARAGRAPH_CHARS or extract_news_source(ln) is not None:
            continue  # short lines (image names, "Return to List") and the news-source line
        if not ln.lower().startswith(("prve:", "prev:", "next:")):
            out.append({"_id": f"{prefix}-p{len(out) + 1:02d}", "title": title, "text": ln})
    return out


def build(corpus_dir: Path = PROJECT_ROOT / "corpus" / "documents") -> list[dict]:
    result = load_documents(corpus_dir)
    rows: list[dict] = []
    for doc in result.documents:
        rows.extend(passages(doc.text, doc.source.split("_")[0], doc.title))
    return rows


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.datasets.make_seed")
    ap.add_argument("--check", action="store_true", help="fail if corpus.jsonl differs from a fresh build")
    args = ap.parse_args(argv)
    text = _jsonl(build())
    path = SEED_DIR / "corpus.jsonl"
    if args.check:
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            print(f"{path} is out of date with corpus/documents", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    SEED_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {text.count(chr(10))} passages to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
