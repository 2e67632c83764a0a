"""Document metadata: title, release date, news source, language; date parsing.

Dates are returned as ISO ``YYYY-MM-DD`` strings. Parsing is strict about
what a date looks like (English month names, ISO / slashed numbers, Chinese
年月日) and validates the calendar date.
"""

from __future__ import annotations

import datetime as _dt
import re

from qiao.corpus.cleaning import noise_spans, render_span
from qiao.corpus.lang import detect_lang
from qiao.corpus.visible import has_visible_text

_MONTHS = {
    "jan": 1, "january": 1, "feb": 2, "february": 2, "mar": 3, "march": 3, "apr": 4, "april": 4,
    "may": 5, "jun": 6, "june": 6, "jul": 7, "july": 7, "aug": 8, "august": 8,
    "sep": 9, "sept": 9, "september": 9, "oct": 10, "october": 10, "nov": 11, "november": 11,
    "dec": 12, "december": 12,
}  # fmt: skip
_MONTH_NAMES = "|".join(sorted(_MONTHS, key=len, reverse=True))

_D = r"[0-9０-９]"  # ASCII or full-width digits
_ORD = r"(?:st|nd|rd|th)?"
_DATE_PATTERNS: list[re.Pattern] = [
    # 2023-03-23, 2023/3/23, 2023.3.23
    re.compile(rf"(?<!{_D})(?P<y>{_D}{{4}})[-/.](?P<m>{_D}{{1,2}})[-/.](?P<d>{_D}{{1,2}})(?!{_D})"),
    # 2021年3月18日, 2021 年 3 月 18 日 (numerals in Chinese characters are not handled)
    re.compile(rf"(?<!{_D})(?P<y>{_D}{{3,4}})\s*年\s*(?P<m>{_D}{{1,2}})\s*月\s*(?P<d>{_D}{{1,2}})\s*[日号號]"),
    # March 23, 2023 / Mar. 23, 2023 / March 23rd 2023 / August 29, 023
    re.compile(
        rf"\b(?P<m>{_MONTH_NAMES})\.?\s+(?P<d>{_D}{{1,2}}){_ORD},?\s+(?P<y>{_D}{{3,4}})(?!{_D})",
        re.IGNORECASE,
    ),
    # 23 March 2023 / 23rd Mar. 2023
    re.compile(
        rf"(?<!{_D})(?P<d>{_D}{{1,2}}){_ORD}\s+(?P<m>{_MONTH_NAMES})\.?,?\s+(?P<y>{_D}{{3,4}})(?!{_D})",
        re.IGNORECASE,
    ),
]

_MIN_YEAR, _MAX_YEAR = 1900, 2100


def _year(s: str) -> int | None:
    """Four-digit years as they are; a three-digit year with a dropped leading digit ("023") -> 2023."""
    y = int(s)
    if len(s) == 4:
        return y if _MIN_YEAR <= y <= _MAX_YEAR else None
    if len(s) == 3 and s.startswith("0"):
        return 2000 + y  # "023": the "2" of 2023 was lost
    return None


def _to_iso(y: str, m: str, d: str) -> str | None:
    year = _year(y)
    month = _MONTHS.get(m.lower().rstrip(".")) if not m.isdigit() else int(m)
    if year is None or month is None:
        return None
    try:
        return _dt.date(year, month, int(d)).isoformat()
    except ValueError:
        return None


def _find_date(s: str, whole: bool) -> str | None:
    for rx in _DATE_PATTERNS:
        for m in rx.finditer(s):
            if whole and (m.start() != 0 or m.end() != len(s)):
                continue
            iso = _to_iso(m.group("y"), m.group("m"), m.group("d"))
            if iso:
                return iso
    return None


def parse_date(s: str) -> str | None:
    """ISO date of the first date written in ``s`` ("March 23, 2023", "2021年2月21日" ...), or None."""
    if not s:
        return None
    return _find_date(s, whole=False)


_DATE_LINE_TRIM = " \t\r\n\u00a0\u3000:：.。,，;；()（）[]【】"


def is_date_line(line: str) -> str | None:
    """ISO date if the stripped ``line`` is nothing but a date, else None."""
    if not line:
        return None
    s = line.strip(_DATE_LINE_TRIM)
    if not s or len(s) > 40:
        return None
    return _find_date(s, whole=True)


# --- document-level metadata ----------------------------------------------------------

_DATE_LABEL_RE = re.compile(
    r"^[ \t\u3000]*(?:Release[ \t]*(?:Date|Time)|Date[ \t]+(?:of[ \t]+)?(?:Release|Publication|Issue)"
    r"|Publi(?:cation|shed|sh)[ \t]*(?:Date|Time|on)?|Issued?[ \t]*(?:Date|on)|Posted[ \t]*(?:on|Date)?"
    r"|发布日期|發布日期|发布时间|發布時間|发文日期|發文日期|成文日期|印发日期|印發日期|公布日期|公佈日期"
    r"|日期|時間|时间|Date)"
    r"[ \t\u3000]*[:：][ \t\u3000]*(?P<value>[^\n\r]{1,80})",
    re.MULTILINE | re.IGNORECASE,
)

_SOURCE_LABEL_RE = re.compile(
    r"^[ \t\u3000]*(?P<label>News[ \t]+source|Source|信息来源|信息來源|文章来源|文章來源|新闻来源|新聞來源|来源|來源)"
    r"[ \t\u3000]*[:：][ \t\u3000]*(?P<value>[^\n\r]{1,300}?)[ \t\u3000]*$",
    re.MULTILINE | re.IGNORECASE,
)

TITLE_MAX_CHARS = 200
_LINE_RE = re.compile(r"[^\r\n\u2028\u2029\x85]+")


def extract_title(text: str, spans: list[tuple[int, int]] | None = None) -> str:
    """First non-empty line that is not pure noise, stripped (cut at 200 characters)."""
    spans = noise_spans(text) if spans is None else spans
    for m in _LINE_RE.finditer(text):
        line = render_span(text, m.start(), m.end(), spans).strip("\ufeff \t")
        if line and has_visible_text(line):  # a line of zero-width or control characters is no title
            if len(line) > TITLE_MAX_CHARS:
                line = line[: TITLE_MAX_CHARS - 1].rstrip() + "…"
            return line
    return ""


def extract_release_date(text: str) -> str | None:
    """The date on a labelled line (``Release Date:2025-03-12``, ``发布日期：2025年3月12日``), or None."""
    for m in _DATE_LABEL_RE.finditer(text):
        iso = parse_date(m.group("value"))
        if iso:
            return iso
    return None


def extract_news_source(text: str) -> str | None:
    """The value of a ``News source: ...`` / ``来源：...`` line ("News source" preferred), or None."""
    best: str | None = None
    for m in _SOURCE_LABEL_RE.finditer(text):
        value = m.group("value").strip()
        if not value:
            continue
        if m.group("label").lower().startswith("news"):
            return value
        if best is None:
            best = value
    return best


def extract_metadata(text: str, source: str) -> dict:
    """``{"title", "date", "news_source", "lang"}`` of a document's text.

    ``title`` falls back to ``source`` (the file name) when the text has no usable line.
    """
    return {
        "title": extract_title(text) or source,
        "date": extract_release_date(text),
        "news_source": extract_news_source(text),
        "lang": detect_lang(text),
    }
