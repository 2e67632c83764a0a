"""Cross-lingual glossary: the lexical bridge that lets a BM25 query reach the other language.

An English query "stem cell clinical trials" gets the (down-weighted) Chinese tokens of
干细胞 and 临床试验 added, and a Chinese query 天津 细胞治疗 the English tokens "tianjin",
"cell", "therapi". Sources:

* ``index/data/glossary.tsv``: domain terms, ``english<TAB>simplified<TAB>alias|alias|~match-only``;
* regions from :mod:`corpus.gazetteer` (``all_regions()``).

Matching: English phrases on stemmed word sequences (:func:`index.analysers.match_keys`, so
"stem cells" == "stem cell"), greedy longest match from the left; Chinese on the NFKC +
Simplified + lowercased text, longest match from the left, by dictionary look-up per length.
Everything is compiled once, lazily; :func:`reload_glossary` rebuilds.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from qiao.corpus.gazetteer import all_regions
from qiao.index.analysers import DATA_DIR, match_keys, normalize, tokenize

GLOSSARY_PATH = DATA_DIR / "glossary.tsv"

MIN_ZH_CHARS = 2
"""Shorter Chinese terms are never matched (a single character such as 津 or 省 is everywhere)."""


_CJK_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")


@dataclass(frozen=True)
class GlossaryEntry:
    """One concept in both languages.

    ``aliases`` are recognised in queries and added as expansions; ``match_only`` are only
    recognised. Both may mix English and Chinese strings (told apart by script).
    """

    en: str
    zh: str
    aliases: tuple[str, ...] = ()
    match_only: tuple[str, ...] = ()
    kind: str = "term"  # "term" | "region"

    def targets(self, lang: str) -> list[str]:
        """Phrases to add for a match in the *other* language: ``lang`` is the language wanted.

        Regions give only their canonical name (aliases are spellings, not extra evidence).
        """
        canonical = self.zh if lang == "zh" else self.en
        if self.kind == "region":
            return [canonical]
        return [canonical, *(a for a in self.aliases if _is_zh(a) == (lang == "zh"))]


def _is_zh(s: str) -> bool:
    return _CJK_RE.search(s) is not None


def _zh_key(s: str) -> str:
    return normalize(s).lower().replace(" ", "")


# ----------------------------------------------------------------------------- loading

def _read_tsv(path: Path, kind: str) -> list[GlossaryEntry]:
    entries = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cols = [c.strip() for c in raw.split("\t")]
        if len(cols) < 2 or not cols[0] or _is_zh(cols[0]) or not _is_zh(cols[1]):
            raise ValueError(f"{path.name}:{lineno}: expected 'english<TAB>chinese[<TAB>aliases]', got {raw!r}")
        aliases, match_only = [], []
        for a in (cols[2].split("|") if len(cols) > 2 else ()):
            a = a.strip()
            if a.startswith("~"):
                match_only.append(a[1:].strip())
            elif a:
                aliases.append(a)
        entries.append(GlossaryEntry(cols[0], cols[1], tuple(aliases), tuple(match_only), kind))
    return entries


def _gazetteer_regions() -> list[GlossaryEntry]:
    """Regions of :mod:`corpus.gazetteer` with an English and a Chinese name, as entries."""
    entries = []
    for r in all_regions():
        en = (r.en or "").strip()
        zh = normalize((r.zh_hans or r.zh_hant or "").strip())
        if not en or not _is_zh(zh):
            continue
        extra = [r.zh_hant or "", *(r.aliases or ())]
        aliases = tuple(dict.fromkeys(a.strip() for a in extra if isinstance(a, str) and a.strip() and a.strip() not in (en, zh)))
        entries.append(GlossaryEntry(en, zh, aliases=aliases, kind="region"))
    return entries


def load_entries() -> list[GlossaryEntry]:
    """All glossary entries: domain terms (glossary.tsv) first, then the gazetteer's regions."""
    return _read_tsv(GLOSSARY_PATH, "term") + _gazetteer_regions()


# ----------------------------------------------------------------------------- compiling

@dataclass(frozen=True)
class _Term:
    entry: int  # index into entries
    phrase: str  # the glossary string that matched (canonical name or alias)
    canonical: bool


@dataclass(frozen=True)
class _Compiled:
    entries: tuple[GlossaryEntry, ...]
    en_first: dict[str, tuple[tuple[tuple[str, ...], _Term], ...]]  # first stem -> (stems, term), longest first
    zh_terms: dict[str, _Term]  # folded Chinese string -> term
    zh_lengths: tuple[int, ...]  # distinct key lengths, longest first


def _compile(entries: list[GlossaryEntry]) -> _Compiled:
    en: dict[tuple[str, ...], _Term] = {}
    zh: dict[str, _Term] = {}

    def add(s: str, term: _Term) -> None:
        # first definition wins (canonical names are added before any alias, terms before regions)
        if _is_zh(s):
            key = _zh_key(s)
            if len(key) >= MIN_ZH_CHARS:
                zh.setdefault(key, term)
        else:
            stems = tuple(k for k in match_keys(s) if k)
            if stems:
                en.setdefault(stems, term)

    for i, e in enumerate(entries):
        add(e.en, _Term(i, e.en, True))
        add(e.zh, _Term(i, e.zh, True))
    for i, e in enumerate(entries):
        for a in (*e.aliases, *e.match_only):
            add(a, _Term(i, a, False))

    first: dict[str, list[tuple[tuple[str, ...], _Term]]] = {}
    for stems, term in en.items():
        first.setdefault(stems[0], []).append((stems, term))
    en_first = {k: tuple(sorted(v, key=lambda x: -len(x[0]))) for k, v in first.items()}
    lengths = tuple(sorted({len(k) for k in zh}, reverse=True))
    return _Compiled(tuple(entries), en_first, zh, lengths)


_compiled: _Compiled | None = None
_lock = threading.Lock()


def _get() -> _Compiled:
    global _compiled
    if _compiled is None:
        with _lock:
            if _compiled is None:
                _compiled = _compile(load_entries())
    return _compiled


def reload_glossary() -> None:
    """Forget the compiled glossary (next call re-reads the data files and the gazetteer)."""
    global _compiled
    with _lock:
        _compiled = None
    _target_tokens.cache_clear()


def glossary_entries() -> tuple[GlossaryEntry, ...]:
    """The entries in use (terms, then regions)."""
    return _get().entries


# ----------------------------------------------------------------------------- matching

def _match_en(g: _Compiled, text: str) -> list[_Term]:
    keys = match_keys(text)
    out, i, n = [], 0, len(keys)
    while i < n:
        for stems, term in g.en_first.get(keys[i], ()):
            if tuple(keys[i : i + len(stems)]) == stems:
                out.append(term)
                i += len(stems)
                break
        else:
            i += 1
    return out


def _match_zh(g: _Compiled, text: str) -> list[_Term]:
    if not _is_zh(text):
        return []
    folded = normalize(text).lower()
    out, i, n = [], 0, len(folded)
    while i < n:
        for size in g.zh_lengths:
            term = g.zh_terms.get(folded[i : i + size]) if i + size <= n else None
            if term is not None:
                out.append(term)
                i += size
                break
        else:
            i += 1
    return out


def bridge_terms(text: str) -> list[tuple[str, str]]:
    """``(source phrase, target phrase)`` pairs the glossary finds in ``text``, in match order.

    The source phrase is the glossary string that matched (e.g. "stem cell" for "stem cells");
    targets are the entry's phrases in the other language, plus its canonical name in the
    same language when an alias matched (卫健委 -> 卫生健康委员会, NMPA ->
    National Medical Products Administration). Duplicates removed.
    """
    if not text or not text.strip():
        return []
    g = _get()
    pairs: list[tuple[str, str]] = []
    for lang_matched, terms in (("en", _match_en(g, text)), ("zh", _match_zh(g, text))):
        other = "zh" if lang_matched == "en" else "en"
        for t in terms:
            e = g.entries[t.entry]
            targets = e.targets(other)
            if not t.canonical:
                targets = targets + [e.en if lang_matched == "en" else e.zh]
            for target in targets:
                if target != t.phrase:
                    pairs.append((t.phrase, target))
    return list(dict.fromkeys(pairs))


@lru_cache(maxsize=8192)
def _target_tokens(phrase: str) -> tuple[str, ...]:
    return tuple(tokenize(phrase))


def expand_query(text: str) -> list[str]:
    """Analysed tokens (:func:`index.analysers.tokenize`) of the glossary equivalents found in ``text``.

    Only tokens the query does not already have, de-duplicated, in match order, so the
    result can be scored as a separate, down-weighted BM25 query. ``[]`` when nothing matches.
    """
    pairs = bridge_terms(text)
    if not pairs:
        return []
    seen = set(tokenize(text))
    out: list[str] = []
    for _, target in pairs:
        for tok in _target_tokens(target):
            if tok not in seen:
                seen.add(tok)
                out.append(tok)
    return out
