"""What counts as visible text, and which characters may not appear in a document's name.

A document must show something: text made only of controls (U+007F x 10,000, C1 controls),
zero-width characters (U+200B...) or whitespace was once stored with 0 chunks or an invisible
title. "Visible" = a character whose Unicode general category is a letter (L*), mark (M*),
number (N*), punctuation (P*) or symbol (S*); invisible = controls (Cc), format characters (Cf:
zero-width, bidi controls, BOM, soft hyphen), separators (Z*), surrogates, private use and
unassigned code points.

File names may not hold format characters (Cf): bidi overrides/isolates/marks (U+202A-U+202E,
U+2066-U+2069, U+200E/U+200F, U+061C) reorder how a name is displayed
(``invoice\\u202etxt.exe.txt`` shows as ``invoiceexe.txt.txt``) and zero-width characters make
two different names look the same. They are refused with a message naming the character rather
than silently removed, so what is stored is exactly what the uploader sees after renaming.
"""

from __future__ import annotations

import unicodedata

VISIBLE_CATEGORIES = frozenset("LMNPS")


def is_visible(ch: str) -> bool:
    return unicodedata.category(ch)[0] in VISIBLE_CATEGORIES


def has_visible_text(text: str) -> bool:
    """True when ``text`` holds at least one visible character (a linear scan, stops at the first)."""
    return any(unicodedata.category(ch)[0] in VISIBLE_CATEGORIES for ch in text)


def format_characters(name: str) -> list[str]:
    """The format (Cf) characters of ``name`` as ``U+202E RIGHT-TO-LEFT OVERRIDE`` labels, in order, once each."""
    seen: dict[str, None] = {}
    for ch in name:
        if unicodedata.category(ch) == "Cf":
            seen.setdefault(f"U+{ord(ch):04X} {unicodedata.name(ch, 'FORMAT CHARACTER')}", None)
    return list(seen)
