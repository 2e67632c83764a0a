"""The texts QA embeds for its citable units, for the index build to embed ahead of time.

``unit_texts(documents, chunks)`` lists, for every chunk row, the ``Sentence.embed_text`` of each
unit :meth:`qiao.qa.sentences.DocumentUnits.in_chunk` would return for it (the chunk's heading and
date as context, then the unit), so the vectors the build stores (:mod:`qiao.index.units`, keyed by
text) are exactly the ones ``AnswerEngine._vectors`` looks up. It is ``in_chunk``'s selection
without the per-unit language and region tagging QA needs but the embedder does not (half the CPU:
0.06 s instead of 0.13 s for openqa-dev's 656 chunks); ``tests/unit/qa/test_unit_vectors.py`` checks
that both give the same texts, and a text that ever differed would only be a lookup miss (embedded
at question time), never a wrong vector.
"""

from __future__ import annotations

import bisect
from typing import Sequence

from qiao.corpus.models import Chunk, Document
from qiao.qa.models import Sentence
from qiao.qa.sentences import unit_spans


def unit_texts(documents: Sequence[Document], chunks: Sequence[Chunk]) -> list[str]:
    """Embed texts of the units of every chunk (duplicates kept; the store de-duplicates by text)."""
    docs = {d.doc_id: d for d in documents}
    spans: dict[str, tuple[list[tuple[int, int]], list[int]]] = {}
    out: list[str] = []
    for row, chunk in enumerate(chunks):
        doc = docs.get(chunk.doc_id)
        if doc is None:
            continue
        got = spans.get(doc.doc_id)
        if got is None:
            sp = unit_spans(doc.text)
            got = spans[doc.doc_id] = (sp, [s for s, _ in sp])
        sp, starts = got
        headings = {chunk.heading.strip()} if chunk.heading else set()
        i = bisect.bisect_left(starts, chunk.start)
        while i < len(sp) and sp[i][0] < chunk.end:
            s, e = sp[i]
            text = doc.text[s:e]
            if text not in headings:
                out.append(Sentence(doc_id=doc.doc_id, start=s, end=e, text=text, chunk=chunk, row=row, lang="").embed_text)
            i += 1
    return out
