"""Citable units of a document: sentences with exact offsets into the ORIGINAL text.

A unit is a sentence (:func:`corpus.chunking.sentence_spans`: Chinese 。！？；… and English
``. ! ?`` boundaries, line breaks), cut around noise (:func:`corpus.cleaning.noise_spans`)
so a quote never contains an image placeholder or CSS residue, trimmed of whitespace, and,
when longer than ``max_chars``, split at clause breaks (a 300-character Chinese sentence
usually packs several statements; a citation should point at the one that answers).

Units without content are dropped: date-only lines, headings, and fragments with fewer than
``MIN_EN_WORDS`` English words / ``MIN_ZH_CHARS`` Chinese characters.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from qiao.corpus.chunking import split_long_span, sentence_spans
from qiao.corpus.cleaning import noise_spans
from qiao.corpus.gazetteer import expand_with_parents, find_regions
from qiao.corpus.lang import cjk_count, detect_lang
from qiao.corpus.metadata import is_date_line
from qiao.corpus.models import Chunk, Document
from qiao.qa.models import Sentence

Span = tuple[int, int]

MAX_UNIT_CHARS = {"en": 450, "zh": 200}
"""Longer units are split at clause breaks (Chinese packs more per character)."""
MIN_EN_WORDS = 4
MIN_ZH_CHARS = 6
_EN_WORD_RE = re.compile(r"[A-Za-z]{2,}")


def _subtract(s: int, e: int, noise: list[Span]) -> list[Span]:
    """``[s, e)`` minus the (sorted, disjoint) noise spans: the noise-free pieces."""
    out: list[Span] = []
    pos = s
    starts = [a for a, _ in noise]
    i = max(bisect.bisect_right(starts, s) - 1, 0)
    for a, b in noise[i:]:
        if a >= e:
            break
        if b <= pos:
            continue
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
    if pos < e:
        out.append((pos, e))
    return out


def _trim(text: str, s: int, e: int) -> Span:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


def has_content(unit: str) -> bool:
    """Enough words to be a statement (not a date line, a label or a stray fragment)."""
    if is_date_line(unit):
        return False
    if cjk_count(unit) >= MIN_ZH_CHARS:
        return True
    return len(_EN_WORD_RE.findall(unit)) >= MIN_EN_WORDS


def unit_spans(text: str, max_chars: dict[str, int] = MAX_UNIT_CHARS) -> list[Span]:
    """Sorted, disjoint spans of the citable units of ``text`` (a whole document)."""
    noise = noise_spans(text)
    out: list[Span] = []
    for s, e in sentence_spans(text):
        for a, b in _subtract(s, e, noise):
            a, b = _trim(text, a, b)
            if a >= b:
                continue
            limit = max_chars["zh" if cjk_count(text[a:b]) * 5 >= b - a else "en"]
            pieces = split_long_span(text, a, b, limit) if b - a > limit else [(a, b)]
            for pa, pb in pieces:
                pa, pb = _trim(text, pa, pb)
                if pa < pb and has_content(text[pa:pb]):
                    out.append((pa, pb))
    return out


@dataclass
class DocumentUnits:
    """The units of one document, for fast "units inside this chunk" look-ups."""

    doc: Document
    spans: list[Span]

    def __post_init__(self):
        self._starts = [s for s, _ in self.spans]
        self.regions = tuple(expand_with_parents(find_regions(self.doc.text)))

    @classmethod
    def of(cls, doc: Document) -> "DocumentUnits":
        return cls(doc, unit_spans(doc.text))

    def in_chunk(self, chunk: Chunk, row: int) -> list[Sentence]:
        """Units that start inside the chunk's span (so each unit belongs to one chunk of a
        non-overlapping chunking; overlapping windows may share units, de-duplicated later)."""
        text = self.doc.text
        headings = {chunk.heading.strip()} if chunk.heading else set()
        context = chunk.regions if chunk.kind == "timeline" else tuple(dict.fromkeys((*chunk.regions, *self.regions)))
        i = bisect.bisect_left(self._starts, chunk.start)
        out: list[Sentence] = []
        while i < len(self.spans) and self.spans[i][0] < chunk.end:
            s, e = self.spans[i]
            unit = text[s:e]
            if unit not in headings:
                out.append(
                    Sentence(
                        doc_id=self.doc.doc_id, start=s, end=e, text=unit, chunk=chunk, row=row,
                        lang=detect_lang(unit), mentions=tuple(find_regions(unit)), context_regions=context,
                    )
                )
            i += 1
        return out
