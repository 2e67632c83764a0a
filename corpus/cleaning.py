"""Noise detection that never moves offsets.

Scraped policy pages carry residue: image placeholders (``IMG_256IMG_257``),
navigation lines (``Return to List``, ``Prve: ...``, ``下一篇：...``), fragments
of inline CSS (``font-size: inherit; ... baseline;">``) and stray HTML tags.
We never rewrite a document's text; instead :func:`noise_spans` reports
``[start, end)`` spans of noise in the ORIGINAL text, and :func:`clean_span`
renders a span with the noise left out (what a chunk shows and indexes).

Every pattern is confined to a single line, so the noise found in a window
equals the noise found in the whole text clipped to that window; that is what
lets :func:`clean_span` work on any ``[start, end)`` and agree with the chunker.
The rules are conservative: each needs a signature that prose does not have.
"""

from __future__ import annotations

import bisect
import re

Span = tuple[int, int]

# --- patterns (none of them crosses a line break) ------------------------------------

# Image placeholders left by converters: IMG_256, IMG_256IMG_257, image_3, [图片], [image].
_IMG_RE = re.compile(
    r"(?<![A-Za-z0-9])(?:(?:IMG|Img|img|IMAGE|Image|image|PIC|pic)_\d+)+(?![A-Za-z0-9])"
    r"|\[(?:图片|圖片|image|img|picture)\]",
)

# Whole navigation lines ("Return to List", "Prve:...", "Next:...", 返回列表, 上一篇：...).
# A line ends at "\n" or "\r" (CRLF and old-Mac files): re's ^/$ alone only know "\n".
_NAV_LINE_RE = re.compile(
    r"(?:^|(?<=\r))[ \t\u3000\u00a0]*(?:"
    r"(?:Return|Back)[ \t]+to[ \t]+(?:the[ \t]+)?(?:List|Top|Home(?:page)?|Index)[ \t]*[.!]?"
    r"|(?:返回列表|返回顶部|返回頂部|返回首页|返回首頁|返回上一页|返回上一頁)"
    r"|(?:Prve|Prev|Previous|Next)(?:[ \t]+(?:article|post|page|item|news|one))?[ \t]*[:：][^\n\r]{0,300}"
    r"|(?:上一篇|下一篇|上一条|下一条|上一條|下一條|上一页|下一页|上一頁|下一頁)[ \t]*[:：][^\n\r]{0,300}"
    r"|(?:【[ \t]*(?:打印本页|打印|关闭窗口|关闭|關閉視窗|關閉|列印本頁|列印|收藏|分享)[ \t]*】[ \t]*)+"
    r")[ \t\u3000\u00a0]*(?=[\r\n]|\Z)",
    re.MULTILINE | re.IGNORECASE,
)

# HTML tags / comments / the non-breaking-space entities, on one line.
_TAG_RE = re.compile(
    r"<!--[^\n\r]*?-->"
    r"|</?[A-Za-z][A-Za-z0-9:-]*(?:[ \t]+[^<>\n\r]{0,500}?)?[ \t]*/?>"
    r"|&(?:nbsp|ensp|emsp|thinsp|#160|#xa0|#12288);",
    re.IGNORECASE,
)

_CSS_PROPS = (
    r"(?:-(?:webkit|moz|ms|o)-[a-z-]+|mso-[a-z-]+"
    r"|font(?:-(?:size|family|weight|style|variant|stretch))?|line-height|vertical-align"
    r"|text-(?:align|indent|decoration|transform|shadow)|letter-spacing|word-spacing|white-space"
    r"|word-(?:break|wrap)|overflow-wrap|background(?:-(?:color|image|position|repeat|size))?"
    r"|(?:margin|padding)(?:-(?:top|bottom|left|right))?"
    r"|border(?:-(?:top|bottom|left|right|width|style|color|radius|collapse))?"
    r"|(?:max|min)-(?:width|height)|box-sizing|outline|visibility|display|float|color|text-size-adjust)"
)
# One or more inline-CSS declarations, optionally the tail of the tag ("> or ”>), or an
# orphan tail such as `baseline;”>` whose property name was cut off.
_CSS_RE = re.compile(
    r"(?:style[ \t]*=[ \t]*[\"'“”]?)?"
    r"(?P<decls>(?:(?<![A-Za-z-])" + _CSS_PROPS + r"[ \t]*:[ \t]*[^;:<>\n\r]{1,80}?[ \t]*;[ \t]*)+)"
    r"(?P<tail>[\"'“”’][ \t]*/?>)?"
    r"|(?<![A-Za-z0-9#.%-])[A-Za-z0-9#.%-]{1,40};[ \t]*[\"'“”’][ \t]*/?>"
    r"|[\"“”][ \t]*/?>(?=[^\s<>])",
    re.IGNORECASE,
)

# Invisible characters that carry nothing (NUL and other C0 controls, zero-width space, BOM).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\u200b\u2060\ufeff]+")

_LINE_BREAKS = "\n\r"


def _css_is_noise(m: re.Match) -> bool:
    """A declaration run counts as noise only with a CSS signature prose lacks."""
    decls = m.group("decls")
    if decls is None:
        return True  # orphan `value;">` tail or a dangling `">`
    if m.group("tail") or m.group(0).lower().startswith("style"):
        return True
    if decls.count(";") >= 2:
        return True
    prop = decls.split(":", 1)[0].strip()
    return "-" in prop  # a single hyphenated property (font-size: 12px;) is unmistakable


def _line_window(text: str, start: int, end: int) -> Span:
    """Extend ``[start, end)`` to whole lines (patterns never cross line breaks)."""
    ls = max(text.rfind("\n", 0, start), text.rfind("\r", 0, start)) + 1
    cands = [i for i in (text.find("\n", end), text.find("\r", end)) if i != -1]
    le = min(cands) if cands else len(text)
    return ls, le


# Every CSS residue contains ";" or ">": only lines with one are searched (the CSS
# regex is comparatively slow, and most lines of prose have neither).
_CSS_ANCHOR_RE = re.compile(r"[;>]")


def _lines_with(text: str, anchor: re.Pattern, ws: int, we: int):
    """Yield ``(start, end)`` of each line within ``[ws, we)`` that contains ``anchor``."""
    pos = ws
    while pos < we:
        m = anchor.search(text, pos, we)
        if m is None:
            return
        ls, le = _line_window(text, m.start(), m.start())
        ls, le = max(ls, ws), min(le, we)
        yield ls, le
        pos = le + 1


def _merge(spans: list[Span]) -> list[Span]:
    spans.sort()
    out: list[Span] = []
    for s, e in spans:
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def noise_spans(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Sorted, non-overlapping ``[start, end)`` spans of noise in ``text``.

    With ``start`` / ``end`` only that window is examined (in its line context)
    and the spans are clipped to it; the result always equals the whole-text
    result clipped to the window.
    """
    n = len(text)
    end = n if end is None else min(max(end, 0), n)
    start = min(max(start, 0), end)
    if start >= end:
        return []
    ws, we = (0, n) if (start == 0 and end == n) else _line_window(text, start, end)
    spans: list[Span] = []
    for rx in (_IMG_RE, _TAG_RE, _CONTROL_RE):
        spans.extend(m.span() for m in rx.finditer(text, ws, we))
    for ls, le in _lines_with(text, _CSS_ANCHOR_RE, ws, we):
        for m in _CSS_RE.finditer(text, ls, le):
            if _css_is_noise(m):
                s, e = m.span()
                # keep the space before the residue as text; trim the residue itself
                while s < e and text[s] in " \t":
                    s += 1
                spans.append((s, e))
    for m in _NAV_LINE_RE.finditer(text, ws, we):
        s, e = m.span()
        # the span covers the line's content, not its surrounding blanks
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        spans.append((s, e))
    merged = _merge(spans)
    if (ws, we) == (start, end):
        return merged
    return [(max(s, start), min(e, end)) for s, e in merged if e > start and s < end]


# --- rendering ----------------------------------------------------------------------

_CJKISH = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f\U00020000-\U0002fa1f]")
_HSPACE_RE = re.compile(r"[^\S\n]+")  # whitespace other than newline (incl. NBSP, U+3000, \r)
_BLANKS_RE = re.compile(r"\n{3,}")


def _needs_space(left: str, right: str) -> bool:
    """Whether removed noise between ``left`` and ``right`` should leave a space."""
    if not left or not right or left.isspace() or right.isspace():
        return False
    return not (_CJKISH.match(left) or _CJKISH.match(right))


def tidy_whitespace(s: str) -> str:
    """Collapse runs of spaces, strip every line, keep at most one blank line."""
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = _HSPACE_RE.sub(" ", s)
    s = "\n".join(line.strip() for line in s.split("\n"))
    s = _BLANKS_RE.sub("\n\n", s)
    return s.strip()


def render_span(text: str, start: int, end: int, spans: list[Span]) -> str:
    """Text of ``[start, end)`` with the given noise ``spans`` (sorted, disjoint) removed, tidied."""
    pieces: list[str] = []
    pos = start
    i = bisect.bisect_right(spans, (start, float("inf"))) - 1
    i = max(i, 0)
    for s, e in spans[i:]:
        if s >= end:
            break
        if e <= start:
            continue
        s, e = max(s, start), min(e, end)
        if s > pos:
            pieces.append(text[pos:s])
        if e < end and s > start and _needs_space(text[s - 1], text[e]):
            pieces.append(" ")
        pos = max(pos, e)
    if pos < end:
        pieces.append(text[pos:end])
    return tidy_whitespace("".join(pieces))


def clean_span(text: str, start: int = 0, end: int | None = None) -> str:
    """The text of ``[start, end)`` with noise removed and whitespace tidied."""
    end = len(text) if end is None else min(max(end, 0), len(text))
    start = min(max(start, 0), end)
    return render_span(text, start, end, noise_spans(text, start, end))


def clean_text(text: str) -> str:
    """The whole of ``text`` with noise removed and whitespace tidied."""
    return clean_span(text, 0, len(text))
