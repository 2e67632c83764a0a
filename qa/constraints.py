"""Constraint checks: a name the question gives must be in the evidence.

A question that names a place, organisation, product or person ("What is the price of Kymriah in
the United States?", 新加坡的细胞治疗产品需要向哪个机构注册？) is not answered by evidence that never
mentions it, however similar the rest of the wording: then the documents do not answer it.

Names (:func:`named_terms`), found without a list of names:

* English: runs of capitalised words that do not start the question ("Super Bowl", "WuXi
  AppTec"), joined over "of / and / the / de" ("Bank of China"), and words with an inner capital
  or all capitals ("CAR-T", "FDA");
* Chinese: jieba's part-of-speech tags for place, organisation, person and other proper names
  (``ns``, ``nt``, ``nr``, ``nz``; two characters or more) and Latin-script words (``eng``);
* question cue words (Which, What, When, ...) are never names.

A name is *met* by the evidence (:func:`unmet_terms`) when at least half of its words are: a word is
met when its analysed tokens are all in the evidence tokens, when it names a region the evidence
names (the gazetteer knows both languages: 天津 = Tianjin), when one of its CC-CEDICT / glossary
translations is in the evidence text (Kunming -> 昆明), or, for a Chinese name of three characters or
more, when at least half of its character pairs are (东南亚国 in 东南亚诸国: jieba's names are not
always the evidence's spelling; this fixed the one openqa-dev false abstention the check caused). The evidence is the text of the top ``k``
retrieved chunks (what the answer may cite), titles and headings included.

Measured (``python -m eval.tune_qa``, eval/RESULTS.md): on openqa-dev's answerable questions a
name is unmet for under 2% of them (mostly names spelt differently in the evidence), on its 60
unanswerable ones for most; on the seed set it catches the unanswerable questions naming Kymriah,
WuXi AppTec, the FDA, Singapore and Hong Kong's insurance without touching an answerable one.
"""

from __future__ import annotations

import re
from functools import lru_cache

from qiao.corpus.gazetteer import find_regions
from qiao.index.analysers import to_simplified, tokenize

_CONNECTORS = {"of", "and", "the", "de", "for"}
_QUESTION_WORDS = set(
    "what which when where who whom whose why how is are was were do does did has have had can could will would "
    "should may might list name tell in on at by for the a an".split()
)
_EN_WORD_RE = re.compile(r"[A-Za-z][\w'&.-]*")
_ZH_NAME_FLAGS = ("ns", "nt", "nr", "nz")
MIN_ZH_NAME_CHARS = 2
MET_SHARE = 0.5
"""A name counts as met when at least this share of its words is met (a translated name rarely keeps every word)."""


def _is_name_word(w: str) -> bool:
    core = w.strip("'.-")
    if len(core) < 2:
        return False
    return core[0].isupper() or any(c.isupper() for c in core[1:])


def _en_names(text: str) -> list[str]:
    words = [(m.group(), m.start()) for m in _EN_WORD_RE.finditer(text)]
    names: list[str] = []
    run: list[str] = []
    first_start = words[0][1] if words else 0

    def close():
        while run and run[-1].lower() in _CONNECTORS:
            run.pop()
        if run:
            names.append(" ".join(run))
        run.clear()

    for w, start in words:
        lw = w.lower()
        if start == first_start and lw in _QUESTION_WORDS:
            continue
        inner_cap = any(c.isupper() for c in w[1:])
        if _is_name_word(w) and (start != first_start or inner_cap) and lw not in _QUESTION_WORDS | {"i"}:
            run.append(re.sub(r"['\u2019]s$", "", w).strip("'.,"))
        elif run and lw in _CONNECTORS:
            run.append(w)
        else:
            close()
    close()
    return names


@lru_cache(maxsize=4096)
def _zh_names(text: str) -> tuple[str, ...]:
    import jieba.posseg as pseg

    out = []
    for p in pseg.cut(text):
        w = p.word.strip()
        if p.flag == "eng":
            if len(w) >= 2:
                out.append(w)
        elif p.flag[:2] in _ZH_NAME_FLAGS and len(w) >= MIN_ZH_NAME_CHARS:
            out.append(w)
    return tuple(dict.fromkeys(out))


def named_terms(text: str) -> list[str]:
    """The names a question gives (English and Chinese rules above), in order, without duplicates."""
    names = [n for seg in re.split(r"[\u3400-\u9fff\uff01-\uff5e\u3000-\u303f]+", text) for n in _en_names(seg)]
    if re.search(r"[\u3400-\u9fff]", text):
        names += [n for n in _zh_names(text) if not re.fullmatch(r"[A-Za-z][\w.-]*", n) or n not in " ".join(names)]
    return list(dict.fromkeys(names))


def _word_met(word: str, tokens: set[str], text: str, regions: set[str]) -> bool:
    from qiao.index.dictionary import translate_en, translate_zh
    from qiao.index.glossary import bridge_terms

    toks = tokenize(word)
    if toks and all(t in tokens for t in toks):
        return True
    if to_simplified(word).lower() in text:
        return True
    cjk = re.sub(r"[^\u3400-\u9fff]", "", to_simplified(word))
    if len(cjk) >= 3:  # a Chinese name written a little differently (东南亚国 / 东南亚诸国): its character pairs
        pairs = [cjk[i : i + 2] for i in range(len(cjk) - 1)]
        if sum(p in text for p in pairs) >= MET_SHARE * len(pairs) + 1e-9:
            return True
    named = find_regions(word)
    if named and any(r in regions for r in named):
        return True
    for _src, tgt in bridge_terms(word):
        if to_simplified(tgt).lower() in text:
            return True
    for _key, targets in translate_en(word):
        if any(to_simplified(t) in text for t in targets):
            return True
    for _w, phrases in translate_zh(word):
        for p in phrases:
            pt = tokenize(p)
            if pt and all(t in tokens for t in pt):
                return True
    return False


def term_met(term: str, tokens: set[str], text: str, regions: set[str]) -> bool:
    """Whether ``term`` is in the evidence (``tokens``: its analysed tokens; ``text``: its
    Simplified, lower-cased text; ``regions``: the gazetteer keys it names)."""
    if _word_met(term, tokens, text, regions):
        return True
    words = [w for w in term.split() if w.lower() not in _CONNECTORS]
    if len(words) <= 1:
        return False
    met = sum(_word_met(w, tokens, text, regions) for w in words)
    return met >= MET_SHARE * len(words)


def unmet_terms(question: str, texts: list[str]) -> list[str]:
    """Names of ``question`` that none of ``texts`` (the evidence) mentions."""
    terms = named_terms(question)
    if not terms:
        return []
    joined = "\n".join(texts)
    tokens = set(tokenize(joined))
    folded = to_simplified(joined).lower()
    regions = set(find_regions(joined))
    return [t for t in terms if not term_met(t, tokens, folded, regions)]
