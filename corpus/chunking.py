"""Structure-aware chunking with exact offsets.

A document becomes a list of :class:`~corpus.models.Chunk`, each a span
``[start, end)`` of ``doc.text`` (never starting or ending in whitespace or
noise) whose ``text`` is that span with noise removed
(:func:`corpus.cleaning.clean_span`).

Two kinds of chunks:

* ``timeline`` -- documents that list dated events (two or more lines that are
  nothing but a date) are cut into one chunk per entry: the date line plus the
  lines after it, up to the next date line or heading. A heading is a short,
  unpunctuated line followed by a date line (or by another heading), e.g.
  "Shenzhen, Guangdong Province", "At the national level", "北京市". Entries
  longer than 3 x ``chunk_size`` are split by sentences; every piece keeps the
  entry's date and heading.
* ``prose`` -- everything else: windows of whole sentences of about
  ``chunk_size`` characters overlapping by about ``chunk_overlap`` characters.

Heading lines are not inside any chunk span; they travel as ``Chunk.heading``
(and in ``Chunk.embed_text``) with every entry below them.

Everything is linear in the text length and never raises on odd input.
"""

from __future__ import annotations

import bisect
import re

from qiao.corpus.cleaning import noise_spans, render_span
from qiao.corpus.gazetteer import expand_with_parents, find_regions
from qiao.corpus.lang import detect_lang
from qiao.corpus.metadata import is_date_line
from qiao.corpus.models import Chunk, Document

Span = tuple[int, int]

# --- sentences -------------------------------------------------------------------------

_CLOSERS = "”’\"'」』）)\\]》〉】"
_BOUNDARY_RE = re.compile(
    rf"(?P<zh>[。！？；…]+[{_CLOSERS}]*)"  # CJK terminators end a sentence wherever they are
    rf"|(?P<en>[.!?]+[{_CLOSERS}]*)(?=\s|$)"  # Latin ones only before whitespace (not 3.5, a.m.)
    r"|(?P<nl>[\r\n\u2028\u2029\x85]+)"  # a line break always ends a sentence
)

# Tokens that end with a period without ending the sentence.
_ABBREV = frozenset(
    """mr mrs ms dr prof sr jr st mt vs etc e.g i.e eg ie cf al approx est inc ltd co corp llc plc dept
    gov govt univ assoc ed eds rev repr trans jan feb mar apr jun jul aug sep sept oct nov dec""".split()
)
# ... and tokens that do so when a number follows ("No. 5", "Art. 12", "pp. 3").
_ABBREV_BEFORE_NUMBER = frozenset("no nos art arts sec secs ch chap p pp para paras fig figs vol vols item tel op".split())
_INITIALS_RE = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")
_OPENERS = "\"'“‘([（【《"


def _period_is_not_boundary(text: str, dot: int, seg_start: int, end: int) -> bool:
    """For a lone "." at ``dot`` followed by whitespace: is it an abbreviation, not a sentence end?"""
    k = dot
    while k > seg_start and dot - k < 24 and not text[k - 1].isspace():
        k -= 1
    token = text[k:dot].lstrip(_OPENERS)
    nxt = dot + 1
    while nxt < end and text[nxt].isspace():
        nxt += 1
    next_ch = text[nxt] if nxt < end else ""
    if next_ch and next_ch.islower():
        return True  # sentences do not start in lower case: "e.g. this", "etc. and"
    if not token:
        return False
    low = token.lower()
    if low in _ABBREV or _INITIALS_RE.fullmatch(token):
        return True  # "Dr. Li", "U.S. FDA", "J. Smith"
    return low in _ABBREV_BEFORE_NUMBER and next_ch.isdigit()


def _trim_ws(text: str, s: int, e: int) -> Span:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Sentences of ``text[start:end]`` as ``(start, end)`` offsets into ``text``, trimmed of whitespace.

    Boundaries: Chinese 。！？；… (with any closing quotes/brackets), English
    ``. ! ?`` followed by whitespace, and line breaks. A period does not end a
    sentence in decimals ("3.5"), after abbreviations and initials ("No. 5",
    "e.g.", "Dr.", "U.S."), or when the next word starts in lower case.
    """
    n = len(text)
    end = n if end is None else min(max(end, 0), n)
    start = min(max(start, 0), end)
    out: list[Span] = []
    seg = start

    def emit(a: int, b: int) -> None:
        a, b = _trim_ws(text, a, b)
        if a < b:
            out.append((a, b))

    for m in _BOUNDARY_RE.finditer(text, start, end):
        kind = m.lastgroup
        if kind == "nl":
            emit(seg, m.start())
            seg = m.end()
            continue
        if kind == "en":
            g = m.group()
            if g[0] == "." and g.count(".") == 1 and not any(c in g for c in "!?"):
                if _period_is_not_boundary(text, m.start(), seg, end):
                    continue
        emit(seg, m.end())
        seg = m.end()
    emit(seg, end)
    return out


# --- noise-aware helpers ---------------------------------------------------------------


class _Noise:
    """Fast "is this offset inside noise?" over sorted, disjoint spans."""

    def __init__(self, spans: list[Span]):
        self.spans = spans
        self.starts = [s for s, _ in spans]

    def end_of(self, pos: int) -> int | None:
        """End of the noise span containing ``pos``, or None."""
        i = bisect.bisect_right(self.starts, pos) - 1
        if i >= 0 and self.spans[i][0] <= pos < self.spans[i][1]:
            return self.spans[i][1]
        return None

    def start_of(self, pos: int) -> int | None:
        """Start of the noise span containing ``pos``, or None."""
        i = bisect.bisect_right(self.starts, pos) - 1
        if i >= 0 and self.spans[i][0] <= pos < self.spans[i][1]:
            return self.spans[i][0]
        return None

    def trim(self, text: str, s: int, e: int) -> Span:
        """Shrink ``[s, e)`` past whitespace and noise at both edges (may become empty)."""
        while s < e:
            if text[s].isspace():
                s += 1
            elif (ne := self.end_of(s)) is not None:
                s = ne
            else:
                break
        while e > s:
            if text[e - 1].isspace():
                e -= 1
            elif (ns := self.start_of(e - 1)) is not None:
                e = ns
            else:
                break
        return (s, e) if s < e else (s, s)


_SOFT_BREAKS = ("，", "、", "；", "：", ",", ";", ":")
_SPACES = (" ", "\t", "\u3000", "\u00a0")


def _find_break(text: str, lo: int, mid: int, hi: int, chars: tuple[str, ...]) -> int:
    """Position just after the last of ``chars`` in ``[lo, mid)``, else the first in ``[mid, hi)``; -1 if none."""
    p = max(text.rfind(ch, lo, mid) for ch in chars)
    if p == -1:
        found = [q for q in (text.find(ch, mid, hi) for ch in chars) if q != -1]
        p = min(found) if found else -1
    return p + 1 if p != -1 else -1


def split_long_span(text: str, s: int, e: int, size: int) -> list[Span]:
    """Cut an over-long sentence into balanced pieces of at most ``size`` characters.

    Cuts go after a clause break (，、,;:) near the target length, else at a space,
    else hard at the target length.
    """
    out: list[Span] = []
    while e - s > size:
        count = -(-(e - s) // size)  # pieces still needed
        target = -(-(e - s) // count)
        lo, mid, hi = s + target // 2, s + target, s + min(size, target + target // 4)
        cut = _find_break(text, lo, mid, hi, _SOFT_BREAKS)
        if cut == -1:
            cut = _find_break(text, lo, mid, hi, _SPACES)
        if cut == -1:
            cut = mid
        a, b = _trim_ws(text, s, cut)
        if a < b:
            out.append((a, b))
        s = cut
        while s < e and text[s].isspace():
            s += 1
    if s < e:
        out.append((s, e))
    return out


def _pieces(text: str, s: int, e: int, noise: _Noise, size: int) -> list[Span]:
    """Sentence spans of ``[s, e)``, trimmed of noise, long ones split."""
    out: list[Span] = []
    for a, b in sentence_spans(text, s, e):
        a, b = noise.trim(text, a, b)
        if a >= b:
            continue
        if b - a > size:
            for p in split_long_span(text, a, b, size):
                p = noise.trim(text, *p)
                if p[0] < p[1]:
                    out.append(p)
        else:
            out.append((a, b))
    return out


def _windows(pieces: list[Span], size: int, overlap: int) -> list[Span]:
    """Greedy windows of whole pieces, ~``size`` long, the next starting ~``overlap`` back."""
    out: list[Span] = []
    n = len(pieces)
    i = 0
    while i < n:
        start = pieces[i][0]
        j = i
        while j + 1 < n and pieces[j + 1][1] - start <= size:
            j += 1
        end = pieces[j][1]
        out.append((start, end))
        if j == n - 1:
            break
        # Step back over whole pieces for the overlap, but only as far as still lets
        # the next window take in the next new piece (no window inside another).
        nxt_end = pieces[j + 1][1]
        k = j + 1
        while k - 1 > i and end - pieces[k - 1][0] <= overlap and nxt_end - pieces[k - 1][0] <= size:
            k -= 1
        i = k
    return out


# --- structure ---------------------------------------------------------------------------

_LINE_RE = re.compile(r"[^\r\n\u2028\u2029\x85]+")
_HEADING_END_PUNCT = set(".。!！?？;；:：,，、…") | set(_CLOSERS)
_HEADING_MAX_EN, _HEADING_MAX_ZH = 60, 12
_HAS_LETTER_RE = re.compile(r"[^\W\d_]")


class _Line:
    __slots__ = ("s", "e", "clean", "date")

    def __init__(self, s: int, e: int, clean: str):
        self.s, self.e, self.clean = s, e, clean
        self.date = is_date_line(clean) if len(clean) <= 40 else None


def _heading_candidate(line: _Line) -> bool:
    c = line.clean
    if line.date or not c or "\n" in c or c[-1] in _HEADING_END_PUNCT:
        return False
    letter = _HAS_LETTER_RE.search(c)
    if letter is None:
        return False
    if detect_lang(c) == "zh":
        return len(c) <= _HEADING_MAX_ZH
    first = letter.group()
    return len(c) <= _HEADING_MAX_EN and not first.islower()


def _lines(text: str, noise: _Noise) -> list[_Line]:
    """Non-empty lines with their noise-trimmed spans and cleaned text (pure-noise lines dropped)."""
    out: list[_Line] = []
    for m in _LINE_RE.finditer(text):
        s, e = noise.trim(text, m.start(), m.end())
        if s < e:
            out.append(_Line(s, e, render_span(text, s, e, noise.spans)))
    return out


def _headings(lines: list[_Line]) -> list[bool]:
    """Which lines are headings: short unpunctuated lines followed by a date line or a heading.

    A line right after a date line is always entry text (an entry is never empty).
    """
    n = len(lines)
    is_head = [False] * n
    for i in range(n - 2, -1, -1):
        nxt = lines[i + 1]
        if not (nxt.date or is_head[i + 1]):
            continue
        if i > 0 and lines[i - 1].date:
            continue
        is_head[i] = _heading_candidate(lines[i])
    return is_head


# --- chunking -------------------------------------------------------------------------------


def chunk_document(doc: Document, chunk_size: int, chunk_overlap: int) -> list[Chunk]:
    """Chunks of ``doc`` in document order (see the module docstring for the rules).

    Offsets are exact: ``doc.text[c.start:c.end]`` is the chunk's span and
    ``c.text == clean_span(doc.text, c.start, c.end)``.
    """
    text = doc.text or ""
    if not text.strip():
        return []
    size = max(int(chunk_size), 1)
    overlap = max(0, min(int(chunk_overlap), size))
    noise = _Noise(noise_spans(text))
    lines = _lines(text, noise)
    timeline = sum(1 for ln in lines if ln.date) >= 2
    is_head = _headings(lines) if timeline else [False] * len(lines)

    spans: list[tuple[int, int, str, str | None, str | None]] = []  # start, end, kind, date, heading

    def add_prose(run: list[_Line], heading: str | None) -> None:
        if not run:
            return
        pieces: list[Span] = []
        for ln in run:
            pieces.extend(_pieces(text, ln.s, ln.e, noise, size))
        for s, e in _windows(pieces, size, overlap):
            spans.append((s, e, "prose", doc.date, heading))

    def add_entry(run: list[_Line], heading: str | None) -> None:
        date = run[0].date
        s, e = run[0].s, run[-1].e
        if e - s <= 3 * size:
            spans.append((s, e, "timeline", date, heading))
            return
        pieces: list[Span] = []
        for ln in run:
            pieces.extend(_pieces(text, ln.s, ln.e, noise, size))
        for ws, we in _windows(pieces, size, overlap):
            spans.append((ws, we, "timeline", date, heading))

    heading: str | None = None
    prose: list[_Line] = []
    i, n = 0, len(lines)
    while i < n:
        ln = lines[i]
        if is_head[i]:
            add_prose(prose, heading)
            prose = []
            heading = ln.clean
            i += 1
        elif timeline and ln.date:
            add_prose(prose, heading)
            prose = []
            j = i + 1
            while j < n and not lines[j].date and not is_head[j]:
                j += 1
            add_entry(lines[i:j], heading)
            i = j
        else:
            prose.append(ln)
            i += 1
    add_prose(prose, heading)

    chunks: list[Chunk] = []
    for s, e, kind, date, head in spans:
        body = render_span(text, s, e, noise.spans)
        if not body:
            continue
        regions = expand_with_parents(find_regions(f"{head}\n{body}" if head else body))
        chunks.append(
            Chunk(
                chunk_id=f"{doc.doc_id}:{len(chunks):04d}",
                doc_id=doc.doc_id,
                source=doc.source,
                title=doc.title,
                start=s,
                end=e,
                text=body,
                lang=detect_lang(body),
                kind=kind,
                date=date,
                heading=head,
                regions=tuple(regions),
            )
        )
    return chunks
