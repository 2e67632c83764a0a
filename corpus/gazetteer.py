"""Bilingual gazetteer of Chinese regions: name resolution and mention finding.

The table lives in ``corpus/data/regions.tsv`` (one row per region: canonical
English key, kind, parent key, English / Simplified / Traditional names and
aliases). Two matchers are compiled from it once:

* English names: one case-insensitive trie-shaped regex, matched on word
  boundaries; spaces in a name also match hyphens / asterisks / line breaks,
  apostrophes are optional ("Xiong'an" == "Xiongan"), brackets may be
  full-width.
* Chinese names: one trie-shaped regex over the text after a *length
  preserving* character normalisation (Traditional -> Simplified for the
  characters used in region names, full-width brackets -> ASCII), so
  "博鰲樂城", "博鳌乐城" and mixed-script "云南省" in a Traditional text all match.

Both regexes give leftmost-longest matches, so "博鰲樂城國際醫療旅遊先行區" is one
mention of Boao Lecheng and "北京市" is Beijing once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

DATA_FILE = Path(__file__).resolve().parent / "data" / "regions.tsv"

KINDS = ("province", "municipality", "autonomous_region", "sar", "city", "district", "pilot_zone")


@dataclass(frozen=True)
class Region:
    """One row of the gazetteer; ``aliases`` holds every other name (English and Chinese)."""

    key: str
    en: str
    zh_hans: str
    zh_hant: str
    kind: str
    parent: str | None
    aliases: tuple[str, ...]


# --- normalisation -----------------------------------------------------------

_CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_APOSTROPHES = "'\u2019\u2018`\u00b4"
_SEP_RE = re.compile(r"[\s*\-\u2010\u2011\u2012\u2013\u2014_]+")
_PAREN_SPACE_RE = re.compile(r"\s*([()])\s*")
_FULLWIDTH = str.maketrans({"（": "(", "）": ")"})

# English name suffixes / Chinese administrative suffixes that resolve_region ignores.
_EN_SUFFIXES = (
    " special administrative region",
    " autonomous region",
    " municipality",
    " new district",
    " new area",
    " province",
    " district",
    " city",
    " sar",
)
_ZH_SUFFIXES = ("特别行政区", "自治区", "特区", "新区", "省", "市", "区", "县")


def _en_shape(name: str) -> str:
    """Lower-cased English name with canonical separators; apostrophes kept as "'"."""
    s = name.translate(_FULLWIDTH).lower()
    for a in _APOSTROPHES[1:]:
        s = s.replace(a, "'")
    s = _SEP_RE.sub(" ", s)
    s = _PAREN_SPACE_RE.sub(r"\1", s)
    return s.strip()


def _en_key(name: str) -> str:
    """Lookup form of an English name: shape without apostrophes."""
    return _en_shape(name).replace("'", "")


def _has_cjk(s: str) -> bool:
    return _CJK_RE.search(s) is not None


# --- trie regex ----------------------------------------------------------------


def _trie_regex(words: Iterable[str], frag) -> str:
    """Regex matching any of ``words``; at each position the longest alternative wins.

    ``frag(ch)`` gives the regex for one character of a word.
    """
    root: dict = {}
    for w in words:
        node = root
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def render(node: dict) -> str:
        alts = [frag(ch) + render(child) for ch, child in sorted(node.items()) if ch != ""]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        # A word may end here: the continuation is optional but tried first (greedy).
        return f"(?:{body})?" if "" in node else body

    return render(root)


def _en_frag(ch: str) -> str:
    if ch == " ":
        return r"[\s*\-\u2010\u2011\u2012\u2013\u2014_]+"
    if ch == "'":
        return r"['\u2019\u2018`\u00b4]?"
    if ch == "(":
        return r"\s*[(（]\s*"
    if ch == ")":
        return r"\s*[)）]\s*"
    return re.escape(ch)


_WORD_CHARS = r"0-9A-Za-z\u00c0-\u024f"


class _Gazetteer:
    def __init__(self, regions: list[Region], names: dict[str, tuple[list[str], list[str], list[str]]]):
        self.regions = regions
        self.by_key = {r.key: r for r in regions}

        # Traditional -> Simplified character map learned from the name pairs
        # (1:1 per character, so translation never changes offsets).
        cmap: dict[str, str] = {}
        conflicts: set[str] = set()
        simplified_chars: set[str] = set()
        for r in regions:
            _, hans, hant = names[r.key]
            for h in hans:
                simplified_chars.update(h)
            for a, b in zip(hans, hant):
                if len(a) != len(b):
                    continue
                for sa, tb in zip(a, b):
                    if sa != tb:
                        if cmap.get(tb, sa) != sa:
                            conflicts.add(tb)
                        cmap[tb] = sa
        for c in conflicts | simplified_chars:
            cmap.pop(c, None)
        cmap.update({"（": "(", "）": ")"})
        self.zh_table = str.maketrans(cmap)

        en_lookup: dict[str, str] = {}
        zh_lookup: dict[str, str] = {}
        en_shapes: list[str] = []
        for r in regions:
            en_names, hans, hant = names[r.key]
            for n in en_names:
                k = _en_key(n)
                if k and k not in en_lookup:
                    en_lookup[k] = r.key
                    en_shapes.append(_en_shape(n))
            for n in (*hans, *hant):
                k = self.zh_norm(n)
                if k and k not in zh_lookup:
                    zh_lookup[k] = r.key
        self.en_lookup = en_lookup
        self.zh_lookup = zh_lookup

        self.en_re = re.compile(
            rf"(?<![{_WORD_CHARS}])(?:{_trie_regex(en_shapes, _en_frag)})(?![{_WORD_CHARS}])",
            re.IGNORECASE,
        )
        self.zh_re = re.compile(_trie_regex(zh_lookup.keys(), re.escape))

        # resolve_region: exact names first, then names with suffixes removed.
        resolve: dict[str, str] = {}
        for r in regions:
            resolve.setdefault(_en_key(r.key), r.key)
        for k, v in en_lookup.items():
            resolve.setdefault(k, v)
        for k, v in zh_lookup.items():
            resolve.setdefault(k, v)
        for k, v in list(en_lookup.items()) + [(_en_key(r.key), r.key) for r in regions]:
            resolve.setdefault(self._strip_en(k), v)
        for k, v in zh_lookup.items():
            resolve.setdefault(self._strip_zh(k), v)
        resolve.pop("", None)
        self.resolve = resolve

    def zh_norm(self, s: str) -> str:
        return s.translate(self.zh_table)

    @staticmethod
    def _strip_en(k: str) -> str:
        if k.startswith("the "):
            k = k[4:]
        for suf in _EN_SUFFIXES:
            if k.endswith(suf) and len(k) > len(suf):
                return k[: -len(suf)]
        return k

    @staticmethod
    def _strip_zh(k: str) -> str:
        for suf in _ZH_SUFFIXES:
            if k.endswith(suf) and len(k) > len(suf) + 1:  # keep at least two characters
                return k[: -len(suf)]
        return k


def _split(field: str) -> list[str]:
    return [p.strip() for p in field.split("|") if p.strip()]


@lru_cache(maxsize=1)
def _gazetteer() -> _Gazetteer:
    regions: list[Region] = []
    names: dict[str, tuple[list[str], list[str], list[str]]] = {}
    header: list[str] | None = None
    for line in DATA_FILE.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if header is None:
            header = cells
            continue
        row = dict(zip(header, cells + [""] * (len(header) - len(cells))))
        en = [row["en"].strip(), *_split(row["en_aliases"])]
        hans = [row["zh_hans"].strip(), *_split(row["zh_hans_aliases"])]
        hant = [row["zh_hant"].strip(), *_split(row["zh_hant_aliases"])]
        kind = row["kind"].strip()
        if kind not in KINDS:
            raise ValueError(f"{DATA_FILE.name}: unknown kind {kind!r} for {row['key']!r}")
        aliases = tuple(dict.fromkeys(n for n in (*en, *hans, *hant) if n and n not in (en[0], hans[0], hant[0])))
        key = row["key"].strip()
        regions.append(
            Region(
                key=key,
                en=en[0],
                zh_hans=hans[0],
                zh_hant=hant[0],
                kind=kind,
                parent=row["parent"].strip() or None,
                aliases=aliases,
            )
        )
        names[key] = (en, hans, hant)
    return _Gazetteer(regions, names)


# --- public API -------------------------------------------------------------------


def all_regions() -> list[Region]:
    """Every region of the gazetteer, in table order (provincial level first)."""
    return list(_gazetteer().regions)


def get_region(key: str) -> Region | None:
    """The region with canonical ``key``, or None."""
    return _gazetteer().by_key.get(key)


def resolve_region(name: str) -> str | None:
    """Canonical key for any name of a region, or None.

    Accepts English (any case, with or without "City" / "Province" /
    "Municipality" ...), Simplified or Traditional Chinese (with or without
    省 / 市 / 自治区 ...), and canonical keys themselves.
    """
    if not name or not name.strip():
        return None
    g = _gazetteer()
    if _has_cjk(name):
        k = re.sub(r"\s+", "", g.zh_norm(name))
        return g.resolve.get(k) or g.resolve.get(g._strip_zh(k))
    k = _en_key(name)
    return g.resolve.get(k) or g.resolve.get(g._strip_en(k))


def find_region_mentions(text: str) -> list[tuple[int, int, str]]:
    """Every region mention in ``text`` as ``(start, end, key)``, sorted by start.

    Offsets point into ``text`` (the Chinese normalisation preserves length).
    """
    if not text:
        return []
    g = _gazetteer()
    found: list[tuple[int, int, str]] = []
    for m in g.en_re.finditer(text):
        key = g.en_lookup.get(_en_key(m.group()))
        if key:
            found.append((m.start(), m.end(), key))
    if _has_cjk(text):
        for m in g.zh_re.finditer(g.zh_norm(text)):
            key = g.zh_lookup.get(m.group())
            if key:
                found.append((m.start(), m.end(), key))
    found.sort()
    return found


def find_regions(text: str) -> list[str]:
    """Canonical keys of the regions mentioned in ``text``: first-mention order, no duplicates."""
    return list(dict.fromkeys(key for _, _, key in find_region_mentions(text)))


def display_name(key: str) -> str:
    """Key and Simplified name, e.g. ``Tianjin 天津``, ``Boao Lecheng 博鳌乐城``; unknown keys unchanged."""
    r = _gazetteer().by_key.get(key)
    return f"{r.key} {r.zh_hans}" if r else key


def ancestors(key: str) -> list[str]:
    """Parent chain of ``key``, nearest first (Nanshan -> [Shenzhen, Guangdong])."""
    by_key = _gazetteer().by_key
    out: list[str] = []
    r = by_key.get(key)
    while r is not None and r.parent and r.parent not in out and r.parent != key:
        out.append(r.parent)
        r = by_key.get(r.parent)
    return out


def expand_with_parents(keys: Iterable[str]) -> list[str]:
    """``keys`` (in order) each followed by its ancestors, without duplicates."""
    out: dict[str, None] = {}
    for k in keys:
        out.setdefault(k, None)
        for a in ancestors(k):
            out.setdefault(a, None)
    return list(out)
