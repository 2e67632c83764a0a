"""Language of a text: "zh" or "en" (used per chunk and per query, so it must be cheap)."""

from __future__ import annotations

import re

# CJK Unified Ideographs (+ Extension A, compatibility ideographs, Extensions B..F).
CJK_CLASS = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_CJK_RE = re.compile(f"[{CJK_CLASS}]")
# Letters of any script (Unicode word characters minus digits and underscore); includes ideographs.
_LETTER_RE = re.compile(r"[^\W\d_]")

ZH_SHARE = 0.2
"""A text is Chinese when ideographs are at least this share of its letters + ideographs.

One ideograph carries roughly a word, one Latin letter a fifth of one, so a
20% share of characters already means Chinese carries much of the content.
"""


def cjk_count(text: str) -> int:
    """Number of CJK ideographs in ``text``."""
    return len(_CJK_RE.findall(text))


def detect_lang(text: str) -> str:
    """``"zh"`` if CJK ideographs are >= 20% of the letters of ``text``, else ``"en"`` (also for empty text)."""
    if not text:
        return "en"
    cjk = cjk_count(text)
    if cjk == 0:
        return "en"
    letters = len(_LETTER_RE.findall(text))
    return "zh" if cjk >= ZH_SHARE * max(letters, cjk) else "en"
