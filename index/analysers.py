"""Text analysers: mixed English / Chinese text -> BM25 tokens.

Used for BM25 indexing, BM25 queries and lexical overlap in QA, so the same text must always
give the same tokens, and it must be fast.

Pipeline of :func:`tokenize`::

    NFKC (full width -> half width) -> OpenCC t2s (Traditional -> Simplified)
    -> split into CJK runs and latin/digit words
       CJK runs:   jieba (private Tokenizer + domain user dictionary), search-style sub-words,
                   Chinese stop words dropped
       latin words: lowercase, hyphenated words give the whole word and its parts,
                   English stop words dropped, Snowball English stem
    -> list[str] in text order (punctuation, symbols, emoji, control characters vanish)

Data files (``index/data/``): ``user_dict.txt``, ``stopwords_en.txt``, ``stopwords_zh.txt``.
Changing them or the module defaults below changes the index: :func:`analyser_fingerprint`
is meant for the index manifest.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import unicodedata
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Iterable, Sequence

from qiao.config import AnalyserConfig
from qiao.settings import Settings

DATA_DIR = Path(__file__).resolve().parent / "data"
USER_DICT_PATH = DATA_DIR / "user_dict.txt"
STOPWORDS_EN_PATH = DATA_DIR / "stopwords_en.txt"
STOPWORDS_ZH_PATH = DATA_DIR / "stopwords_zh.txt"

ANALYSER_VERSION = "1"
"""Bump when the code below changes its output (part of :func:`analyser_fingerprint`)."""

_config = AnalyserConfig.of(Settings.model_construct())
"""The analyser's options in force. They are Settings fields (``QIAO_ANALYSER_*``), put in force
once per process by :func:`configure` (the service and the eval do it from their Settings); until
then the Settings defaults apply. Each option is part of :func:`analyser_fingerprint`, so an index
built with other options is stale.

``chinese_mode`` -- how Chinese words are emitted.

"search" (default): every jieba word, followed by the words inside it (e.g. 间充质干细胞 ->
间充质干细胞, 干细胞, 细胞). jieba's dictionary holds many long compounds (深圳市人大常委会,
上海市人民政府, 明确提出) and our user dictionary adds more (细胞治疗, 自贸试验区); in precise
mode a query for 常委会 or 细胞 would never match them, and a query's segmentation of a
compound often differs from the document's. The whole word still comes first, so a document
with the exact compound scores higher. This is jieba's ``cut_for_search`` idea, but with
hierarchical decomposition instead of its 2/3-gram scan (see :func:`_subwords`).

"precise": jieba's accurate mode only (fewer, longer tokens; higher precision, lower recall).

``jieba_hmm`` -- whether jieba guesses unknown words with its HMM. Off: an out-of-vocabulary name
such as 骆文智 then falls into single characters in documents and queries alike, while with the
HMM its segmentation depends on the characters around it, so a query could miss the document.

``user_dict`` -- whether the domain user dictionary (``data/user_dict.txt``) is loaded into jieba.
"""
_config_lock = threading.Lock()


def configure(config: AnalyserConfig) -> None:
    """Put the analyser options in force for this process (a no-op when they are already)."""
    global _config, _jieba
    with _config_lock:
        if config == _config:
            return
        if config.user_dict != _config.user_dict:
            _jieba = None  # rebuilt with (or without) the user dictionary
            _subwords.cache_clear()
            _segment_cached.cache_clear()
        _config = config


def current_config() -> AnalyserConfig:
    return _config

MAX_LATIN_TOKEN_CHARS = 64
"""Longer latin "words" (base64, hashes, glued junk) are dropped: they never match a query."""

_CACHED_RUN_CHARS = 64  # longer CJK runs are segmented without the cache (rarely repeat, big keys)

# CJK unified ideographs (+ extension A, compatibility block, extensions B-F). Kana, Hangul,
# Greek etc. go down the "latin" path: lowercase, no stemming effect.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_WORD = rf"[^\W_{_CJK}]+"  # letters/digits of any script except CJK
_TOKEN_RE = re.compile(rf"(?P<zh>[{_CJK}]+)|(?P<w>{_WORD}(?:-{_WORD})*)")
_HAS_CJK_RE = re.compile(f"[{_CJK}]")
# "people's" -> "peoples", "Xi'an" -> "xian", "don't" -> "dont" (then a stop word)
_APOSTROPHE_RE = re.compile(r"(?<=[^\W\d_])['\u2019\u02bc](?=[^\W\d_])")
# hyphen look-alikes NFKC leaves alone; en/em dashes stay separators (ranges, asides)
_HYPHENS = str.maketrans({"\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2212": "-", "\u00ad": ""})
_SURROGATE_RE = re.compile("[\ud800-\udfff]")

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- data files

def _read_word_list(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a UTF-8 word list (first whitespace-separated field kept whole)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


@lru_cache(maxsize=1)
def english_stopwords() -> frozenset[str]:
    """Lowercase English stop words (unstemmed)."""
    return frozenset(w.lower() for w in _read_word_list(STOPWORDS_EN_PATH))


@lru_cache(maxsize=1)
def chinese_stopwords() -> frozenset[str]:
    """Chinese stop words, folded to Simplified."""
    return frozenset(to_simplified(unicodedata.normalize("NFKC", w)) for w in _read_word_list(STOPWORDS_ZH_PATH))


def user_dictionary() -> list[tuple[str, int | None]]:
    """``(word, frequency or None)`` pairs of the jieba user dictionary, words folded to Simplified."""
    out: list[tuple[str, int | None]] = []
    if not _config.user_dict:
        return []
    for line in _read_word_list(USER_DICT_PATH):
        parts = line.split()
        freq = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        out.append((to_simplified(unicodedata.normalize("NFKC", parts[0])), freq))
    return out


# ----------------------------------------------------------------------------- OpenCC

_opencc = None
_opencc_lock = threading.Lock()


def _converter():
    global _opencc
    if _opencc is None:
        with _opencc_lock:
            if _opencc is None:
                import opencc

                try:
                    _opencc = opencc.OpenCC("t2s.json")  # accepted by every official binding version
                except Exception:  # pragma: no cover - other opencc builds want the bare name
                    _opencc = opencc.OpenCC("t2s")
    return _opencc


def to_simplified(text: str) -> str:
    """Traditional -> Simplified Chinese with OpenCC ``t2s`` (phrase-aware: 幹細胞/干細胞 -> 干细胞).

    Non-Chinese characters pass through unchanged; lone surrogates (which OpenCC cannot
    encode) become U+FFFD. t2s maps characters one to one in practice, but callers that need
    offsets into the original should not rely on equal lengths.
    """
    if not text or not _HAS_CJK_RE.search(text):
        return text
    try:
        return _converter().convert(text)
    except UnicodeEncodeError:
        return _converter().convert(_SURROGATE_RE.sub("\ufffd", text))


# ----------------------------------------------------------------------------- jieba

_jieba = None
_jieba_lock = threading.Lock()


def _segmenter():
    """The private jieba Tokenizer with the user dictionary, built once (thread-safe)."""
    global _jieba
    if _jieba is None:
        with _jieba_lock:
            if _jieba is None:
                import jieba

                # jieba logs "Building prefix dict ..." to stderr on first use
                jieba.setLogLevel(logging.WARNING)
                tok = jieba.Tokenizer()
                tok.initialize()
                for word, freq in user_dictionary():
                    # no frequency: jieba's suggestion, just enough to beat the word's own split.
                    # A high fixed frequency makes words steal characters (细胞药物 in 干细胞药物).
                    tok.add_word(word, freq)
                _jieba = tok
    return _jieba


@lru_cache(maxsize=65536)
def _subwords(word: str) -> tuple[str, ...]:
    """Dictionary words inside ``word`` (len > 2), outermost first, by recursive re-segmentation.

    The word is segmented again with the whole-word reading forbidden (jieba's DAG minus the
    full-length edge), and each piece of 2+ characters is emitted and decomposed in turn:
    上海市人民政府 -> 上海市, 上海, 人民政府, 人民, 政府. Unlike jieba's ``cut_for_search``
    (every 2- and 3-gram that happens to be a word) this yields no straddling pieces such as
    海市 or 民政, which would make 民政 (civil affairs) match every 人民政府.
    """
    tok = _segmenter()
    n = len(word)
    dag = tok.get_DAG(word)
    dag[0] = [k for k in dag[0] if k != n - 1] or [0]
    route: dict = {}
    tok.calc(word, dag, route)
    out: list[str] = []
    i = 0
    while i < n:
        j = route[i][1] + 1
        piece = word[i:j]
        if len(piece) > 1:
            out.append(piece)
            if len(piece) > 2:
                out.extend(_subwords(piece))
        i = j
    return tuple(out)


def _segment(run: str, mode: str, hmm: bool) -> tuple[str, ...]:
    """Tokens of one run of CJK characters (already Simplified): jieba words, sub-words, no stop words."""
    if len(run) <= _CACHED_RUN_CHARS:
        return _segment_cached(run, mode, hmm)
    return _segment_run(run, mode, hmm)


@lru_cache(maxsize=65536)
def _segment_cached(run: str, mode: str, hmm: bool) -> tuple[str, ...]:
    # mode and hmm are in the key so changing the module defaults takes effect;
    # headings, boilerplate and query words repeat a lot
    return _segment_run(run, mode, hmm)


def _segment_run(run: str, mode: str, hmm: bool) -> tuple[str, ...]:
    tok = _segmenter()
    stop = chinese_stopwords()
    out: list[str] = []
    for word in tok.cut(run, HMM=hmm):
        if word not in stop:
            out.append(word)
        if mode == "search" and len(word) > 2:
            out.extend(w for w in _subwords(word) if w not in stop)
    return tuple(out)


# ----------------------------------------------------------------------------- stemming

_stemmer = None
_stemmer_lock = threading.Lock()  # PyStemmer objects keep state: one call at a time


def _stem_words(words: list[str]) -> list[str]:
    global _stemmer
    if not words:
        return words
    with _stemmer_lock:
        if _stemmer is None:
            import Stemmer

            _stemmer = Stemmer.Stemmer("english")
        return _stemmer.stemWords(words)


# ----------------------------------------------------------------------------- analysis

def normalize(text: str) -> str:
    """NFKC (ＣＡＲ－Ｔ -> CAR-T, ideographic compatibility forms -> unified), hyphen look-alikes -> '-',
    then Traditional -> Simplified. Lowercasing is left to the latin path."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text).translate(_HYPHENS)
    return to_simplified(text)


def _latin_words(word: str, stop: frozenset[str]) -> Iterable[str]:
    """Unstemmed tokens of one latin word: the hyphenated whole first, then its non-stop parts."""
    if len(word) > MAX_LATIN_TOKEN_CHARS:
        return ()
    if "-" in word:
        return [word, *(p for p in word.split("-") if p not in stop)]
    return () if word in stop else (word,)


def tokenize(text: str) -> list[str]:
    """BM25 tokens of mixed English / Chinese (Simplified or Traditional) text.

    Returns a list of str in text order, duplicates kept (term frequency matters): Chinese
    words in Simplified (plus sub-words, see ``chinese_mode`` above), English words lowercased
    and Snowball-stemmed ("Trials" -> "trial", "therapies" -> "therapi"), numbers as written
    ("2023"), hyphenated words whole and in parts ("CAR-T" -> "car-t", "car"). Never raises on
    str input; empty / symbol-only input gives ``[]``.
    """
    if not text:
        return []
    text = _APOSTROPHE_RE.sub("", normalize(text))
    cfg = _config
    en_stop = english_stopwords()
    out: list[str] = []
    latin_at: list[int] = []  # positions in ``out`` holding unstemmed latin words
    for m in _TOKEN_RE.finditer(text):
        run = m.group("zh")
        if run is not None:
            out.extend(_segment(run, cfg.chinese_mode, cfg.jieba_hmm))
        else:
            for w in _latin_words(m.group("w").lower(), en_stop):
                latin_at.append(len(out))
                out.append(w)
    if latin_at:
        stems = _stem_words([out[i] for i in latin_at])
        for i, s in zip(latin_at, stems):
            out[i] = s
    return out


def tokenize_many(texts: Sequence[str]) -> list[list[str]]:
    """:func:`tokenize` of each text; ``len(result) == len(texts)``."""
    return [tokenize(t) for t in texts]


def match_keys(text: str) -> list[str]:
    """Stemmed English word sequence for phrase matching (used by the glossary).

    Unlike :func:`tokenize`, a hyphenated word contributes only its parts, all of them
    (so "CAR-T" -> ["car", "t"] and "high-tech zone" == "high tech zone"), and a Chinese run
    contributes an empty string, so no phrase matches across it.
    """
    if not text:
        return []
    text = _APOSTROPHE_RE.sub("", normalize(text))
    en_stop = english_stopwords()
    words: list[str] = []
    for m in _TOKEN_RE.finditer(text):
        if m.group("zh") is not None:
            if words and words[-1] != "":
                words.append("")
            continue
        w = m.group("w").lower()
        if len(w) > MAX_LATIN_TOKEN_CHARS:
            continue
        if "-" in w:
            words.extend(p for p in w.split("-") if p)
        elif w not in en_stop:
            words.append(w)
    keys = _stem_words([w for w in words if w])
    it = iter(keys)
    return [next(it) if w else "" for w in words]


def analyser_fingerprint() -> str:
    """Hex digest identifying the analyser's behaviour (code version, mode, data files, library versions).

    Store it in the index manifest: an index built with another fingerprint has other tokens.
    """
    h = hashlib.sha256()
    cfg = _config
    h.update(f"v{ANALYSER_VERSION}|{cfg.chinese_mode}|hmm={cfg.jieba_hmm}|max={MAX_LATIN_TOKEN_CHARS}".encode())
    h.update(USER_DICT_PATH.read_bytes() if cfg.user_dict else b"")
    for path in (STOPWORDS_EN_PATH, STOPWORDS_ZH_PATH):
        h.update(path.read_bytes())
    for dist in ("jieba", "opencc", "PyStemmer"):
        try:
            h.update(f"|{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:  # pragma: no cover
            h.update(f"|{dist}=?".encode())
    return h.hexdigest()[:16]
