"""What a question asks for: its language / script and its type (list, date, quantity, factoid).

The rules are surface cues that hold for any policy corpus, not for the seed documents:

* ``list``: which / what + a region noun ("which regions", "what provinces and cities"),
  哪些/哪几个/哪個 + a region noun (哪些地区, 哪幾個城市). Only region lists are grouped
  (the region facet is what the index knows); "which university" is a factoid.
* ``date``: when / what year / which date, 何时/什么时候/哪一年/哪天 ...
* ``quantity``: how many / how much / what number, 多少/几个/幾項 ...
* ``place``: where, 哪里/哪裡/什么地方 (one place, led with the region of the best evidence).
* ``factoid``: everything else.

Cue words are also removed from the question's lexical tokens: "regions" or 什么时候 say
what form the answer takes, not what the evidence must contain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from qiao.corpus.gazetteer import expand_with_parents, find_regions
from qiao.corpus.lang import detect_lang
from qiao.index.analysers import tokenize, to_simplified
from qiao.index.glossary import bridge_terms, expand_query

QTYPES = ("list", "date", "quantity", "place", "factoid")

_EN_REGION_NOUNS = (
    r"regions?|provinces?|cities|city|places?|areas?|localit(?:y|ies)|municipalit(?:y|ies)"
    r"|zones?|jurisdictions?|local governments?|prefectures?|districts?|countries|country|states|towns?|counties"
)
_EN_AMBIGUOUS_PLACE = {"area", "areas", "zone", "zones"}
"""Nouns that are places only bare or after a geographic qualifier: "which areas", "which pilot zones",
but "which disease areas" asks for disease areas (a generic list, not a region list)."""
_EN_GEO_QUALIFIERS = set(
    "pilot free trade economic special development demonstration administrative coastal border rural urban "
    "local national regional high-tech industrial bonded new".split()
)
_EN_AUX = set("is are was were do does did has have had can could will would should may might must be been".split())
_EN_WH_RE = re.compile(r"\b(which|what)\s+((?:[\w'-]+[ \t]*){1,4})", re.IGNORECASE)
_EN_LIST_VERB_RE = re.compile(r"\b(?:list|name|enumerate)\s+(?:the\s+|all\s+)?(?:[\w'-]+\s+){0,2}?([\w'-]+s)\b", re.IGNORECASE)
_NOT_PLURAL = re.compile(r"(?:ss|us|is|ics|news|'s)$", re.IGNORECASE)
_ZH_REGION_NOUNS = r"地区|地區|省份|省|市(?!场|場)|城市|地方|区域|區域|自贸区|自貿區|试验区|試驗區|先行区|先行區|国家|國家"
_ZH_LIST_RE = re.compile(r"哪些|哪几个|哪幾個|哪几|哪幾|(?:哪个|哪個)\s*.{0,3}?(?:%s)" % _ZH_REGION_NOUNS)
_ZH_PLACES_RE = re.compile(
    rf"(?:哪些|哪几个|哪幾個|哪几|哪幾|哪个|哪個)\s*.{{0,3}}?(?:{_ZH_REGION_NOUNS})"
)


def _en_list_head(text: str) -> tuple[str, list[str]] | None:
    """``(head noun, modifiers)`` of an English list question: which / what + up to three words
    ending in a plural noun ("which disease areas", "what new measures"), or list / name + a
    plural; None when the question asks for one thing ("which university", "what did ...")."""
    for m in _EN_WH_RE.finditer(text):
        words = m.group(2).split()
        mods: list[str] = []
        for w in words:
            lw = w.lower()
            if lw in _EN_AUX or lw in ("of", "the", "a", "an"):
                break
            if re.fullmatch(_EN_REGION_NOUNS, lw) or (lw.endswith("s") and len(lw) > 3 and not _NOT_PLURAL.search(lw)):
                if lw.endswith("s") or lw in ("cities", "countries", "counties"):
                    return lw, mods
                break  # a singular region noun: "which city" is one place
            mods.append(lw)
    v = _EN_LIST_VERB_RE.search(text)
    if v and not _NOT_PLURAL.search(v.group(1)):
        return v.group(1).lower(), []
    return None


def asks_for_places(text: str) -> bool:
    """Whether a list question asks for places (its answer is grouped by region)."""
    if _ZH_PLACES_RE.search(text):
        return True
    head = _en_list_head(text)
    if head is None:
        return False
    noun, mods = head
    if not re.fullmatch(_EN_REGION_NOUNS, noun):
        return False
    return noun not in _EN_AMBIGUOUS_PLACE or all(w in _EN_GEO_QUALIFIERS for w in mods)


_EN_PLACE_RE = re.compile(r"\bwhere\b", re.IGNORECASE)
_ZH_PLACE_RE = re.compile(r"哪里|哪裡|哪儿|哪兒|何地|何处|何處|什么地方|什麼地方")
_EN_DATE_RE = re.compile(
    r"\bwhen\b|\b(?:what|which)\s+(?:date|day|year|month)\b|\bin what year\b|\bdate of\b|\bwhat time\b",
    re.IGNORECASE,
)
_ZH_DATE_RE = re.compile(
    r"何时|何時|什么时候|什麼時候|哪一年|哪年|哪一天|哪天|哪一日|几月|幾月|几号|幾號|什么日期|什麼日期"
    r"|什么时间|什麼時間|何日|何年|哪个月|哪個月|日期是"
)
_EN_QUANTITY_RE = re.compile(
    r"\bhow\s+(?:many|much)\b|\bwhat\s+(?:is\s+the\s+)?(?:number|amount|price|cost|share|proportion|percentage)\b",
    re.IGNORECASE,
)
_ZH_QUANTITY_RE = re.compile(r"多少|多大|(?<!哪)(?:几|幾)(?:个|個|项|項|条|條|家|章|款|批|种|種|类|類)|比例|价格|價格")

# Words that only shape the question. Tokenised with the BM25 analyser and dropped from the
# question's lexical tokens (the English stop list already removes which/what/when ...).
_YEAR_RE = re.compile(r"(?<!\d)((?:19|20)\d\d)(?!\d)")

_CUE_WORDS = (
    "region regions province provinces city cities place places area areas locality localities "
    "municipality municipalities jurisdiction jurisdictions zone zones when date day year month "
    "many much number list name tell"
).split() + [
    "哪些", "哪个", "哪個", "哪里", "哪裡", "地区", "地區", "省份", "城市", "地方", "区域", "區域",
    "什么时候", "什麼時候", "时候", "時候", "何时", "何時", "哪一年", "哪年", "哪一天", "一天", "哪天", "日期", "时间", "時間",
    "多少", "几个", "幾個", "什么", "什麼", "哪", "是", "了", "吗", "嗎", "呢",
]


@lru_cache(maxsize=1)
def _cue_tokens() -> frozenset[str]:
    out: set[str] = set()
    for w in _CUE_WORDS:
        out.update(tokenize(w))
    return frozenset(out)


@dataclass(frozen=True)
class Question:
    """An analysed question.

    ``tokens``: BM25-analysed content tokens (cue words removed, de-duplicated, in order);
    ``bridge``: glossary tokens of the same content in the other language.
    """

    text: str
    lang: str  # "en" | "zh"
    script: str | None  # "hans" | "hant" for Chinese, None for English
    qtype: str  # one of QTYPES
    tokens: tuple[str, ...]
    bridge: tuple[str, ...]
    regions: tuple[str, ...] = ()  # regions the question names, with their ancestors (gazetteer keys)
    years: tuple[str, ...] = ()  # years the question names ("in 2021", 2021年)
    translations: dict[str, tuple[frozenset[str], ...]] = field(default_factory=dict, compare=False, hash=False)
    """content token -> token sets of its glossary equivalents (细胞 -> {cell, therapi} from 细胞治疗 -> cell therapy)."""
    dict_translations: dict[str, tuple[frozenset[str], ...]] = field(default_factory=dict, compare=False, hash=False)
    """content token -> token sets of its CC-CEDICT translations (index/dictionary.py; depart -> {部门}, ...)."""
    places: bool = False
    """A list question that asks for places ("which regions", 哪些地区): its answer is grouped by region."""


def chinese_script(text: str) -> str:
    """"hant" when OpenCC t2s changes the text (it has Traditional-only characters), else "hans"."""
    return "hant" if to_simplified(text) != text else "hans"


def question_type(text: str, lang: str | None = None) -> str:
    """One of :data:`QTYPES` for ``text`` (cues of both languages are checked: questions mix them)."""
    if _ZH_LIST_RE.search(text) or (_en_list_head(text) is not None and not _EN_QUANTITY_RE.search(text)):
        return "list"
    if _EN_DATE_RE.search(text) or _ZH_DATE_RE.search(text):
        return "date"
    if _EN_QUANTITY_RE.search(text) or _ZH_QUANTITY_RE.search(text):
        return "quantity"
    if _EN_PLACE_RE.search(text) or _ZH_PLACE_RE.search(text):
        return "place"
    return "factoid"


def content_tokens(text: str) -> list[str]:
    """BM25 tokens of ``text`` without question cue words, de-duplicated, in order."""
    cues = _cue_tokens()
    return list(dict.fromkeys(t for t in tokenize(text) if t not in cues))


def translations(text: str, tokens: list[str]) -> dict[str, tuple[frozenset[str], ...]]:
    """For each content token inside a glossary match, the analysed tokens of each equivalent
    phrase (other language, or the canonical name of an alias)."""
    wanted = set(tokens)
    out: dict[str, list[frozenset[str]]] = {}
    for src, tgt in bridge_terms(text):
        target = frozenset(tokenize(tgt))
        if not target:
            continue
        for t in tokenize(src):
            if t in wanted and target not in out.setdefault(t, []):
                out[t].append(target)
    return {t: tuple(v) for t, v in out.items()}


def dictionary_translations(text: str, tokens: list[str]) -> dict[str, tuple[frozenset[str], ...]]:
    """For each content token, the analysed tokens of its CC-CEDICT translations (both directions,
    :mod:`qiao.index.dictionary`: phrases before words, sense-filtered)."""
    from qiao.index.dictionary import translate_en, translate_zh

    wanted = set(tokens)
    out: dict[str, list[frozenset[str]]] = {}
    pairs = [(key.split(), targets) for key, targets in translate_en(text)]
    pairs += [(tokenize(word), phrases) for word, phrases in translate_zh(text)]
    for sources, targets in pairs:
        for tgt in targets:
            target = frozenset(tokenize(tgt))
            if not target:
                continue
            for t in sources:
                if t in wanted and target not in out.setdefault(t, []):
                    out[t].append(target)
    return {t: tuple(v) for t, v in out.items() if v}


def analyse_question(text: str) -> Question:
    lang = detect_lang(text)
    tokens = content_tokens(text)
    cues = _cue_tokens()
    bridge = [t for t in dict.fromkeys(expand_query(text)) if t not in cues and t not in tokens]
    qtype = question_type(text, lang)
    return Question(
        text=text,
        lang=lang,
        script=chinese_script(text) if lang == "zh" else None,
        qtype=qtype,
        tokens=tuple(tokens),
        bridge=tuple(bridge),
        regions=tuple(expand_with_parents(find_regions(text))),
        years=tuple(dict.fromkeys(_YEAR_RE.findall(text))),
        translations=translations(text, tokens),
        dict_translations=dictionary_translations(text, tokens),
        places=qtype == "list" and asks_for_places(text),
    )
