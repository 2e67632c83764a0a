"""Follow-up questions in a conversation: "and in Beijing?" after "When did Tianjin ...?".

:func:`resolve_question` turns the user turns of a chat into the one question to answer: the
last user message, or, when it is a short follow-up, the previous question re-aimed by it
(:func:`carry_over`).

Linear time on any input (issue 17, finding 2). The first version used regular expressions
such as ``[\\s？?！!。.，,]*(?:呢|如何)...$`` searched over the whole message: every start
position re-scans the run of punctuation, so ``"。" * n + "x"`` costs O(n²) (0.2 / 0.65 / 2.2 s at
5k / 10k / 20k characters; a 180 KB chat body froze the server for 30 s). Now:

* a follow-up is short by definition (at most 6 words / 15 Chinese characters after its opening),
  so any message longer than :data:`MAX_FOLLOW_UP_CHARS` after stripping is not one and is
  rejected by one ``len`` before anything else looks at it;
* the openings ("and what about", 那么, 还有 ...) are matched by comparing words at the start of
  the text, and trailing punctuation / the Chinese tails (呢, 怎么样 ...) by scanning back from the
  end: each character is looked at a bounded number of times, no regular expression touches
  user text;
* :func:`carry_over` only strips trailing punctuation of the previous question (a scan from the
  end) and splices region names at offsets the gazetteer found (its patterns are alternations of
  literal names).

The caller bounds the previous question too (``max_query_chars``), so the resolved question
can never exceed what ``/ask`` accepts.
"""

from __future__ import annotations

from qiao.corpus.gazetteer import find_region_mentions, get_region
from qiao.corpus.lang import cjk_count, detect_lang

EN_MAX_WORDS = 6
ZH_MAX_CHARS = 15
MAX_FOLLOW_UP_CHARS = 200
"""Longest message (after stripping) that can be a follow-up: the longest opening ("and what
about", 14 characters) + 6 words of up to ~25 characters + punctuation fits well within it."""

# English openings, longest first (each a sequence of words; any whitespace between them).
_EN_OPENINGS: tuple[tuple[str, ...], ...] = (
    ("and", "what", "about"),
    ("and", "how", "about"),
    ("same", "question", "for"),
    ("what", "about"),
    ("how", "about"),
    ("what", "of"),
    ("and", "also"),
    ("and", "for"),
    ("same", "for"),
    ("and",),
    ("also",),
    ("or",),
)
# Chinese openings, longest first. 那 on its own ("那上海呢") but not 那些/那个/那里... ("those", "that one", "there").
_ZH_OPENINGS = ("那如果是", "如果是", "那么", "那麼", "还有", "還有", "另外", "以及", "至于", "至於", "换成", "換成")
_ZH_THAT_NOT = set("些个個里裡边邊样樣种種位")
_ZH_TAILS = ("的情况呢", "的情況呢", "怎么样", "怎麼樣", "如何", "呢")  # longest first
_END_PUNCT = set("？?！!。.")  # may follow a Chinese tail
_PUNCT = _END_PUNCT | set("，,")  # trailing punctuation of a question
_AFTER_EN_OPENING = set(",:")
_AFTER_ZH_OPENING = set("，,：:")


def _strip_end(s: str, chars: set[str]) -> str:
    """``s`` without its trailing whitespace and ``chars`` (one scan from the end)."""
    i = len(s)
    while i and (s[i - 1].isspace() or s[i - 1] in chars):
        i -= 1
    return s[:i]


def _skip(s: str, i: int, chars: set[str]) -> int:
    """First position at or after ``i`` that is neither whitespace nor one of ``chars``."""
    while i < len(s) and (s[i].isspace() or s[i] in chars):
        i += 1
    return i


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _en_opening_end(s: str) -> int | None:
    """End of an English opening at the start of ``s`` (with the spaces, commas, colons after it), or None."""
    for words in _EN_OPENINGS:
        i = 0
        for n, w in enumerate(words):
            if n:
                j = _skip(s, i, set())
                if j == i:  # the words of an opening are separated by whitespace
                    break
                i = j
            if s[i : i + len(w)].lower() != w:
                break
            i += len(w)
        else:
            if i < len(s) and _is_word_char(s[i]):  # "android" does not open with "and"
                continue
            return _skip(s, i, _AFTER_EN_OPENING)
    return None


def _zh_opening_end(s: str) -> int | None:
    """End of a Chinese opening at the start of ``s`` (with the punctuation after it), or None."""
    for w in _ZH_OPENINGS:
        if s.startswith(w):
            return _skip(s, len(w), _AFTER_ZH_OPENING)
    if s.startswith("那") and s[1:2] not in _ZH_THAT_NOT:
        return _skip(s, 1, _AFTER_ZH_OPENING)
    return None


def _without_zh_tail(s: str) -> str | None:
    """``s`` without a closing 呢 / 怎么样 / 如何 ... (and the punctuation around it), or None when it has none."""
    core = _strip_end(s, _END_PUNCT)
    for tail in _ZH_TAILS:
        if core.endswith(tail):
            return _strip_end(core[: len(core) - len(tail)], _PUNCT)
    return None


def follow_up_rest(text: str) -> str | None:
    """The new part of a short follow-up ("and in Beijing?" -> "in Beijing"), or None if ``text`` is not one.

    A follow-up is short (at most 6 words / 15 Chinese characters after its opening) and opens
    with "and", "what about", "how about", "also", 那/那么/还有/另外/至于..., or is a bare Chinese
    "X呢？". Texts longer than :data:`MAX_FOLLOW_UP_CHARS` are not follow-ups (checked first).
    """
    s = text.strip()
    if len(s) > MAX_FOLLOW_UP_CHARS:
        return None
    start = _en_opening_end(s)
    if start is None:
        start = _zh_opening_end(s)
    if start is None and _without_zh_tail(s) is None:
        return None
    rest = s[start:] if start is not None else s
    untailed = _without_zh_tail(rest)
    rest = _strip_end(rest if untailed is None else untailed, _PUNCT).strip()
    if not rest:
        return None
    cjk = cjk_count(rest)
    if cjk:
        if cjk > ZH_MAX_CHARS:
            return None
    elif len(rest.split()) > EN_MAX_WORDS:
        return None
    return rest


def _region_name(key: str, surface: str, target_lang: str) -> str:
    """The region as the user wrote it when the scripts agree, else its gazetteer name in ``target_lang``."""
    if (cjk_count(surface) > 0) == (target_lang == "zh"):
        return surface
    r = get_region(key)
    if r is None:
        return surface
    return r.zh_hans if target_lang == "zh" else r.en


def carry_over(previous: str, rest: str) -> str:
    """``previous`` question re-aimed by the follow-up part ``rest``.

    If both name regions and ``previous`` names exactly one, its mentions are replaced by the new
    region(s) ("When did Tianjin ...?" + "Beijing" -> "When did Beijing ...?"); otherwise ``rest``
    is added to the previous question's topic ("... research?" + "in 2023" -> "... research in 2023?").
    """
    prev_lang = detect_lang(previous)
    new = find_region_mentions(rest)
    old = find_region_mentions(previous)
    if new and old and len({key for _, _, key in old}) == 1:
        names = list(dict.fromkeys(_region_name(key, rest[s:e], prev_lang) for s, e, key in new))
        joined = ("和" if prev_lang == "zh" else " and ").join(names)
        out, pos = [], 0
        for s, e, _ in old:
            out.append(previous[pos:s])
            out.append(joined)
            pos = e
        out.append(previous[pos:])
        return "".join(out)
    core = _strip_end(previous, _PUNCT)
    end = previous[len(core) :].strip()
    sep = "" if (cjk_count(core[-1:]) and cjk_count(rest[:1])) else " "
    return f"{core}{sep}{rest}{end}"


def resolve_question(user_turns: list[str]) -> str:
    """The question to answer: the last user turn, with a follow-up resolved against the earlier ones.

    Each user turn is resolved in order, so a chain of follow-ups keeps the original topic.
    Empty turns are skipped. Callers bound the turns (count and characters) before calling this.
    """
    resolved: str | None = None
    for text in user_turns:
        if not text.strip():
            continue
        rest = follow_up_rest(text) if resolved else None
        resolved = carry_over(resolved, rest) if rest and resolved else text.strip()
    if resolved is None:
        raise ValueError("no user question to resolve")
    return resolved
