"""Answer text in the question's language (English, Simplified or Traditional Chinese).

No language model: the lead sentence is a template filled with what the evidence states
(dates, figures, region names); the supporting statements are the evidence itself, in its
original language, each ending with its citation marker ``[n]``.

The composer works on :class:`Statement` lists built by the pipeline and numbers the
citations in order of first use, so every marker in the text has a citation and vice versa.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from dataclasses import dataclass, field

from qiao.corpus.gazetteer import display_name
from qiao.index.analysers import to_simplified
from qiao.qa.models import Citation, Sentence

_MONTHS_EN = (
    "January February March April May June July August September October November December"
).split()


def format_date(iso: str, lang: str) -> str:
    """"2023-07-27" -> "July 27, 2023" (en) / "2023年7月27日" (zh); unparsable input unchanged."""
    try:
        d = dt.date.fromisoformat(iso)
    except (TypeError, ValueError):
        return iso
    if lang == "zh":
        return f"{d.year}年{d.month}月{d.day}日"
    return f"{_MONTHS_EN[d.month - 1]} {d.day}, {d.year}"


_s2t = None
_s2t_lock = threading.Lock()


def to_traditional(text: str) -> str:
    """Simplified -> Traditional with OpenCC ``s2t`` (for answers to Traditional questions)."""
    global _s2t
    if _s2t is None:
        with _s2t_lock:
            if _s2t is None:
                import opencc

                try:
                    _s2t = opencc.OpenCC("s2t.json")
                except Exception:  # pragma: no cover - other opencc builds want the bare name
                    _s2t = opencc.OpenCC("s2t")
    return _s2t.convert(text)


def one_line(text: str) -> str:
    """Whitespace runs collapsed (quotes keep their exact form in the citation, not in the answer text)."""
    return re.sub(r"\s+", " ", text).strip()


@dataclass
class Statement:
    """One supporting statement: the evidence sentence and an optional label ("Tianjin 天津", a date)."""

    sentence: Sentence
    label: str | None = None


@dataclass
class Composition:
    """Citations are numbered by :meth:`cite` in order of first use."""

    citations: list[Citation] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # index rows of the cited units' chunks, in citation order
    _ids: dict[tuple[str, int, int], int] = field(default_factory=dict)

    def cite(self, s: Sentence, doc_text: str) -> int:
        key = s.key
        if key in self._ids:
            return self._ids[key]
        cid = len(self.citations) + 1
        quote = doc_text[s.start : s.end]
        self.citations.append(
            Citation(
                id=cid, doc_id=s.doc_id, source=s.chunk.source, title=s.chunk.title, start=s.start, end=s.end,
                quote=quote, date=s.chunk.date, regions=tuple(s.chunk.regions),
            )
        )
        self._ids[key] = cid
        self.rows.append(s.row)
        return cid


def marker(ids: list[int] | int) -> str:
    ids = [ids] if isinstance(ids, int) else ids
    return "".join(f"[{i}]" for i in ids)


def in_script(text: str, script: str | None) -> str:
    """``text`` in the question's Chinese script (Traditional / Simplified); unchanged for English."""
    if script == "hant":
        return to_traditional(text)
    if script == "hans":
        return to_simplified(text)
    return text


def finish(lead: str, lines: list[str], script: str | None) -> str:
    """Lead sentence (in the question's script) + one statement per line (evidence as written)."""
    lead = in_script(lead, script)
    return "\n".join([lead, *lines]) if lines else lead


def statement_lines(statements: list[Statement], comp: Composition, docs: dict, script: str | None) -> list[str]:
    lines = []
    for st in statements:
        cid = comp.cite(st.sentence, docs[st.sentence.doc_id].text)
        label = in_script(st.label, script) if st.label else None
        prefix = f"{label}: " if label else ""
        lines.append(f"- {prefix}{one_line(st.sentence.text)} {marker(cid)}")
    return lines


# --- lead sentences ---------------------------------------------------------------------------


def lead_abstain(lang: str) -> str:
    if lang == "zh":
        return "文档中没有找到这个问题的答案。最接近的检索结果附在下面，供您核对。"
    return "The documents do not answer this question. The nearest passages are attached as hits for you to check."


def lead_unmet(lang: str, terms: list[str]) -> str:
    """Abstention because the question names something the evidence never mentions (qa.constraints)."""
    if lang == "zh":
        return f"文档没有提到{'、'.join(terms)}，因此无法回答这个问题。最接近的检索结果附在下面，供您核对。"
    names = ", ".join(f"\u201c{t}\u201d" for t in terms)
    return (f"The documents do not mention {names}, so they do not answer this question. "
            "The nearest passages are attached as hits for you to check.")


def lead_list(lang: str, regions: list[tuple[str, list[int]]]) -> str:
    """``regions``: ``(region key, citation ids)`` strongest first."""
    parts = [f"{display_name(k)} {marker(ids)}" if lang == "en" else f"{display_name(k)}{marker(ids)}" for k, ids in regions]
    n = len(regions)
    if lang == "zh":
        return f"文档提到{n}个地区：" + "、".join(parts) + "。"
    noun = "region" if n == 1 else "regions"
    return f"The documents name {n} {noun}: " + ", ".join(parts) + "."


def lead_items(lang: str, ids: list[int], n_docs: int) -> str:
    """Lead of a list answer about anything but places: how many statements, from how many documents."""
    if lang == "zh":
        return f"文档中有{len(ids)}条相关内容（来自{n_docs}份文档）{marker(ids)}："
    docs = f"{n_docs} document{'s' if n_docs != 1 else ''}"
    return f"The documents give {len(ids)} relevant statements ({docs}) {marker(ids)}:"


_EN_SOFT_START = re.compile(r"^(The|A|An|This|These|That|Those|It|Its|In|On)\b")


def lead_date(lang: str, dates: list[tuple[str, str, list[int]]], restate: Sentence | None) -> str:
    """``dates``: ``(iso, origin, citation ids)`` with origin "text" | "entry" | "release".

    With ``restate`` (an evidence sentence in the question's language that does not spell
    the date itself), the lead is "On <date>, <sentence>" / "<日期>，<句子>".
    """
    iso, origin, ids = dates[0]
    d = format_date(iso, lang)
    m = marker(ids)
    if origin == "release":
        if lang == "zh":
            return f"文档没有写明具体日期；相关文章的发布日期是{d}{m}。"
        return f"The documents give no exact date; the article reporting it was released on {d} {m}."
    if restate is not None:
        body = one_line(restate.text)
        if lang == "zh":
            body = body.rstrip("。.；;，, ")
            return f"{d}，{body}{m}。"
        body = body.rstrip(". ")
        if _EN_SOFT_START.match(body):
            body = body[0].lower() + body[1:]
        return f"On {d}, {body} {m}."
    others = [(format_date(i, lang), marker(x)) for i, o, x in dates[1:] if o != "release"]
    if lang == "zh":
        tail = "".join(f"；另见{od}{om}" for od, om in others)
        return f"根据文档，时间是{d}{m}{tail}。"
    tail = "".join(f"; see also {od} {om}" for od, om in others)
    return f"According to the documents, this was on {d} {m}{tail}."


def lead_quantity(lang: str, phrase: str, ids: list[int]) -> str:
    if lang == "zh":
        return f"文档给出的数字：“{phrase}”{marker(ids)}。"
    return f"The documents give the figure: \u201c{phrase}\u201d {marker(ids)}."


def lead_place(lang: str, regions: list[str], ids: list[int]) -> str:
    names = "、".join(display_name(r) for r in regions) if lang == "zh" else ", ".join(display_name(r) for r in regions)
    if lang == "zh":
        return f"根据文档，地点是{names}{marker(ids)}。"
    return f"According to the documents, this was in {names} {marker(ids)}."


def lead_factoid(lang: str, best: Sentence, ids: list[int], n_docs: int) -> str:
    """The best sentence itself when it is in the question's language (converted to the
    question's script by :func:`finish`), else a pointer to it."""
    if best.lang == lang:
        body = one_line(best.text)
        if lang == "zh":
            return f"根据文档：{body}{marker(ids)}"
        return f"According to the documents: {body} {marker(ids)}"
    if lang == "zh":
        return f"相关内容见英文原文{marker(ids)}（共{n_docs}份文档）："
    return f"The answer is in the Chinese-language source {marker(ids)} ({n_docs} document{'s' if n_docs != 1 else ''} in all):"
