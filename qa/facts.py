"""Facts a lead sentence can state: the date of a piece of evidence, the figure that answers a
"how many", the region a sentence is about."""

from __future__ import annotations

import re

from qiao.corpus.gazetteer import find_regions, get_region
from qiao.corpus.metadata import parse_date
from qiao.index.analysers import tokenize
from qiao.qa.models import Sentence
from qiao.qa.question import Question

# --- dates ------------------------------------------------------------------------------------


def evidence_date(s: Sentence) -> tuple[str, str] | None:
    """``(iso, origin)`` of a sentence: a date written in it ("text"), else its timeline entry's
    date ("entry"), else its document's release date ("release"); None without any."""
    iso = parse_date(s.text)
    if iso:
        return iso, "text"
    if s.chunk.date:
        return s.chunk.date, "entry" if s.chunk.kind == "timeline" else "release"
    return None


_TIME_RE = re.compile(
    r"(?<!\d)(?:1[0-9]|20)\d\d(?!\d)|\b(?:January|February|March|April|May|June|July|August|September|October"
    r"|November|December|century|centuries|decade|\d0s)\b|\d\s*(?:年|月|日|世纪|世紀|年代)|[一二三四五六七八九十]+(?:世纪|世紀|月)"
    r"|(?:春|夏|秋|冬)季|(?:上|中|下)旬",
    re.IGNORECASE,
)


def has_time_expression(text: str) -> bool:
    """Whether ``text`` states a time: a year (1000-2099), a month name, a century or decade, 年/月/日
    after a number, 世纪. What a "when" question's answer holds, in any corpus (not only policy dates
    that :func:`evidence_date` can turn into an ISO date)."""
    return bool(_TIME_RE.search(text))


# --- figures ----------------------------------------------------------------------------------

_EN_NUM_WORDS = "one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|hundred|dozens?"
_EN_QUAL = r"(?:(?:more|fewer|less)\s+than|over|nearly|almost|about|around|approximately|up\s+to|at\s+least|a\s+total\s+of)"
_EN_FIGURE_RE = re.compile(
    rf"(?:\b{_EN_QUAL}\s+)?(?:\b\d[\d,]*(?:\.\d+)?%?|\b(?:{_EN_NUM_WORDS})\b)",
    re.IGNORECASE,
)
_ZH_QUAL = r"(?:超过|超過|近|约|約|逾|共|多达|多達|累计|累計|合计|合計)"
_ZH_FIGURE_RE = re.compile(rf"{_ZH_QUAL}?\s*\d+(?:\.\d+)?\s*(?:多|余|餘)?")
_STOP_AT = re.compile(r"[,，;；:：。.!?！？、()（）《》“”\"\n]")
_YEAR_RE = re.compile(r"^(?:19|20)\d\d$")


def _date_spans(text: str) -> list[tuple[int, int]]:
    """Rough spans of written dates / year ranges (figures inside them are not answers)."""
    pats = (
        r"\d{3,4}\s*年(?:\s*\d{1,2}\s*月)?(?:\s*\d{1,2}\s*[日号號])?",
        r"\b\d{4}\s*[-–/]\s*\d{2,4}\b",
        r"\b(?:January|February|March|April|May|June|July|August|September|October|November|December)\s+\d{1,2},?\s+\d{3,4}",
    )
    out: list[tuple[int, int]] = []
    for p in pats:
        out.extend(m.span() for m in re.finditer(p, text))
    return out


def figures(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, phrase)`` of each figure with what follows it up to the next clause break
    ("more than 400 cell and gene therapy products", "16 條政策措施"); years and dates excluded."""
    dates = _date_spans(text)
    out = []
    for rx in (_EN_FIGURE_RE, _ZH_FIGURE_RE):
        for m in rx.finditer(text):
            s, e = m.span()
            num = re.sub(r"\D", "", m.group())
            if num and _YEAR_RE.match(num) and len(num) == 4:
                continue
            if any(a <= s < b or a < e <= b for a, b in dates):
                continue
            stop = _STOP_AT.search(text, e)
            tail_end = stop.start() if stop else len(text)
            tail_end = min(tail_end, e + 60)
            phrase = text[s:tail_end].strip()
            if phrase:
                out.append((s, tail_end, phrase))
    out.sort()
    # drop figures nested in an earlier phrase ("nine chapters and 72 articles" keeps "nine ...")
    kept: list[tuple[int, int, str]] = []
    for f in out:
        if kept and f[0] < kept[-1][1]:
            continue
        kept.append(f)
    return kept


def best_figure(q: Question, s: Sentence) -> str | None:
    """The figure phrase of ``s`` whose words overlap the question most (ties: the first)."""
    want = set(q.tokens) | set(q.bridge)
    best, best_overlap = None, -1
    for start, end, phrase in figures(s.text):
        window = s.text[max(0, start - 24) : end]
        overlap = len(want & set(tokenize(window)))
        if overlap > best_overlap:
            best, best_overlap = phrase, overlap
    return best


# --- regions ----------------------------------------------------------------------------------

LIST_KINDS = ("province", "municipality", "autonomous_region", "sar", "city")
"""Levels a list answer names: pilot zones and districts roll up to the city / province around them."""


def list_level(key: str) -> str | None:
    """``key`` or its nearest ancestor at a :data:`LIST_KINDS` level (Boao Lecheng -> Hainan,
    Nanshan -> Shenzhen, Tianjin FTZ -> Tianjin); None for unknown keys."""
    r = get_region(key)
    seen = set()
    while r is not None and r.kind not in LIST_KINDS and r.parent and r.key not in seen:
        seen.add(r.key)
        r = get_region(r.parent)
    return r.key if r is not None and r.kind in LIST_KINDS else None


def _is_ancestor(a: str, b: str) -> bool:
    r = get_region(b)
    seen = set()
    while r is not None and r.parent and r.key not in seen:
        seen.add(r.key)
        if r.parent == a:
            return True
        r = get_region(r.parent)
    return False


# "Hong Kong, Macao and Taiwan" (港澳台) names a category of people or capital in mainland
# policy texts ("Hong Kong, Macao and Taiwan doctors"), not places a policy applies to.
_HMT = {"Hong Kong", "Macao", "Taiwan"}


ENUMERATION_MIN = 3
"""A sentence naming this many places under one parent is about the parent
("Shijiazhuang, Qinhuangdao, Baoding, Langfang and Xiong'an" in a Hebei plan is Hebei)."""


def most_specific(keys: list[str]) -> list[str]:
    """List-level regions of ``keys`` (in order), without any that is an ancestor of another;
    an enumeration of ``ENUMERATION_MIN``+ siblings is replaced by their parent."""
    levels = list(dict.fromkeys(k for k in (list_level(x) for x in keys) if k))
    if _HMT <= set(levels):
        levels = [k for k in levels if k not in _HMT]
    by_parent: dict[str, list[str]] = {}
    for k in levels:
        r = get_region(k)
        if r is not None and r.parent:
            by_parent.setdefault(r.parent, []).append(k)
    for parent, kids in by_parent.items():
        if len(kids) >= ENUMERATION_MIN:
            first = levels.index(kids[0])
            levels = [k for k in levels if k not in kids and k != parent]
            levels.insert(min(first, len(levels)), parent)
    return [k for k in levels if not any(o != k and _is_ancestor(k, o) for o in levels)]


def sentence_regions(s: Sentence) -> list[str]:
    """Regions a sentence is about, at list level, most specific only:

    1. the regions it names itself;
    2. in a timeline entry, the entry's main region (its first, most specific one: the
       "Work Plan for Supporting Beijing ..." entry is about Beijing even in its later
       sentences, an entry under 廣東省 about 深圳市南山區 is about Shenzhen);
    3. in prose, the regions in the document's title (a news item about one place).
    """
    named = most_specific(list(s.mentions))
    if named:
        return named
    if s.chunk.kind == "timeline":
        main = most_specific(list(s.chunk.regions))
        return main[:1]
    return most_specific(find_regions(s.chunk.title or ""))
