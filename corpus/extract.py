"""Text out of uploaded files: ``.txt`` / ``.md`` (loader rules), ``.html`` (trafilatura), ``.pdf`` (pypdf).

The extracted text is what Qiao stores and what every offset of an uploaded
document points into, so it is produced once, here, and never re-derived.
Every error is a :class:`~corpus.loader.DocumentError` whose ``source`` is the
uploaded file's name.

Bounds (:class:`ExtractLimits`, from ``QIAO_MAX_EXTRACTED_CHARS`` and ``QIAO_EXTRACT_TIMEOUT_S``):
extraction stops, with :class:`TooMuchText` (HTTP 413), as soon as the text would exceed the
character budget, without extracting the rest. Measured reasons: a 23 KB PDF whose two pages
share one compressed content stream held 2.8 MB of text (pypdf: 24.7 s per page, the page text is
built by repeated string concatenation, so the cost grows faster than linearly); a 19.9 MB one-line
text file meant hours of embedding. Checks, cheapest first:

- text: ``len(bytes) > 4 * max_chars`` is over budget before decoding (UTF-8 has at most 4
  bytes per character, so such a file has more than ``max_chars`` characters); else decode and count.
- HTML: pages over ``HTML_BYTES_PER_CHAR * max_chars`` bytes are refused before parsing
  (trafilatura took 150 s on a 16.9 MB page); the extracted text is counted.
- PDF: page by page. The uncompressed content streams are measured first (zlib, milliseconds) and
  a file whose content exceeds ``PDF_CONTENT_BYTES_PER_CHAR * max_chars`` bytes is refused before
  pypdf parses it (parsing a 1.7 MB stream took 6 s); text is counted while pypdf produces it
  (a ``visitor_text`` callback) and extraction stops at the budget or the time limit (checked
  between content-stream operators). A page whose content stream is the very object of an earlier
  page repeats that page's text without extracting it again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import time
from dataclasses import dataclass
from typing import Callable
from pathlib import PurePosixPath, PureWindowsPath

from qiao.errors import TooLarge, Unsupported
from qiao.corpus.loader import DocumentError, decode_bytes, document_from_text
from qiao.corpus.models import Document
from qiao.corpus.visible import format_characters

KINDS = {".txt": "text", ".md": "text", ".markdown": "text", ".html": "html", ".htm": "html", ".pdf": "pdf"}
SUPPORTED_SUFFIXES = tuple(KINDS)
MAX_NAME_CHARS = 200

_NAME_BAD_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL, C1 controls: dropped from names
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_TRAILING_WS_RE = re.compile(r"[ \t\u00a0]+$", re.MULTILINE)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_BLANK_RUN_RE = re.compile(r"\n{3,}")


HTML_BYTES_PER_CHAR = 8
"""HTML larger than this many bytes per allowed character is refused unparsed (markup is usually 2-5x the text)."""
PDF_CONTENT_BYTES_PER_CHAR = 16
"""PDF content streams larger than this many bytes per allowed character are refused unparsed
(text-showing operators with positioning take ~1.5-6 bytes per character; vector drawings more)."""


class UnsupportedFileType(DocumentError, Unsupported):
    """The file's type (by extension) is not one Qiao can extract text from (HTTP 415)."""

    code = Unsupported.code
    http_status = Unsupported.http_status


class TooMuchText(DocumentError, TooLarge):
    """The file holds more text than an upload may add (``QIAO_MAX_EXTRACTED_CHARS``), or its
    extraction ran out of time (``QIAO_EXTRACT_TIMEOUT_S``). HTTP 413."""

    code = TooLarge.code
    http_status = TooLarge.http_status


@dataclass
class ExtractLimits:
    """``max_chars``: characters the file may yield (None: no limit); ``deadline``: ``time.monotonic()``
    by which extraction must end; ``should_stop``: returns a reason to abandon (server shutting down)."""

    max_chars: int | None = None
    deadline: float | None = None
    timeout_s: float | None = None
    should_stop: Callable[[], str | None] | None = None
    total_chars: int | None = None  # the upload's whole budget when ``max_chars`` is what earlier files left of it

    @classmethod
    def of(cls, max_chars: int | None, timeout_s: float | None, should_stop=None) -> "ExtractLimits":
        deadline = time.monotonic() + timeout_s if timeout_s else None
        return cls(max_chars, deadline, timeout_s, should_stop)

    def too_much(self, source: str, what: str = "") -> TooMuchText:
        if self.total_chars is not None and self.total_chars != self.max_chars:
            return TooMuchText(
                source,
                f"with the files before it, the upload holds more than {self.total_chars:,} characters of text, the "
                "most one upload may add (QIAO_MAX_EXTRACTED_CHARS); upload the files separately or split them",
            )
        return TooMuchText(
            source,
            f"{what or 'the file'} holds more than {self.max_chars:,} characters of text, the most one upload may add "
            "(QIAO_MAX_EXTRACTED_CHARS); split the file into smaller ones",
        )

    def check_chars(self, source: str, n: int, what: str = "") -> None:
        if self.max_chars is not None and n > self.max_chars:
            raise self.too_much(source, what)

    def check_time(self, source: str) -> None:
        if self.should_stop is not None:
            reason = self.should_stop()
            if reason:
                raise TooMuchText(source, f"text extraction stopped: {reason}")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TooMuchText(
                source,
                f"extracting the text took longer than {self.timeout_s:g} s (QIAO_EXTRACT_TIMEOUT_S); "
                "split the file into smaller ones",
            )


@dataclass(frozen=True)
class Extracted:
    """One uploaded file after extraction.

    ``source``: the sanitised file name; ``kind``: "text" | "html" | "pdf";
    ``text``: the extracted text (what is stored and indexed);
    ``original_bytes`` / ``original_sha256``: size and full sha256 of the uploaded bytes.
    """

    source: str
    kind: str
    text: str
    original_bytes: int
    original_sha256: str

    def to_document(self) -> Document:
        """The Document for the stored text (raises DocumentError for empty or binary-looking text)."""
        return document_from_text(self.text, self.source)


def safe_filename(name: str | None) -> str:
    """The last path component of an uploaded name, without control characters, at most 200 characters."""
    name = name or ""
    # browsers send bare names, other clients may send paths of either flavour
    name = PureWindowsPath(PurePosixPath(name).name).name
    name = _NAME_BAD_RE.sub("", name).strip()
    hidden = format_characters(name)
    if hidden:
        raise DocumentError(
            name.encode("ascii", "backslashreplace").decode("ascii"),
            f"the file name contains invisible formatting characters ({', '.join(hidden)}) that change how the "
            "name is displayed (e.g. disguise its type); rename the file without them",
        )
    if not name.strip("."):
        raise DocumentError("(unnamed file)", "the upload has no file name; give the file a name ending in " + ", ".join(SUPPORTED_SUFFIXES))
    if len(name) > MAX_NAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: MAX_NAME_CHARS - len(ext) - 2] + "…" + dot + ext) if dot else name[:MAX_NAME_CHARS]
    return name


def kind_of(name: str) -> str:
    """"text" | "html" | "pdf" for a file name (raises UnsupportedFileType)."""
    suffix = PurePosixPath(name.lower()).suffix
    kind = KINDS.get(suffix)
    if kind is None:
        raise UnsupportedFileType(
            name, f"unsupported file type {suffix or '(no extension)'!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    return kind


def extract(data: bytes, filename: str | None, limits: ExtractLimits | None = None) -> Extracted:
    """Extract the text of one uploaded file (raises DocumentError / UnsupportedFileType / TooMuchText
    naming the file)."""
    source = safe_filename(filename)
    kind = kind_of(source)
    limits = limits or ExtractLimits()
    if not data:
        raise DocumentError(source, "file is empty (0 bytes)")
    if kind == "text":
        if limits.max_chars is not None and len(data) > 4 * limits.max_chars:  # > 4 bytes per character is impossible
            raise limits.too_much(source, f"the file ({len(data):,} bytes)")
        text = _text_from_plain(data, source)
    elif kind == "html":
        if limits.max_chars is not None and len(data) > HTML_BYTES_PER_CHAR * limits.max_chars:
            raise limits.too_much(source, f"the page ({len(data):,} bytes)")
        text = _text_from_html(data, source)
    else:
        text = _text_from_pdf(data, source, limits)
    limits.check_chars(source, len(text))
    return Extracted(source, kind, text, len(data), hashlib.sha256(data).hexdigest())


def _text_from_plain(data: bytes, source: str) -> str:
    """Exactly the loader's rules: strict UTF-8, NUL bytes mean binary; the text is kept byte for byte."""
    if b"\x00" in data and not data.startswith(_UTF16_BOMS):
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise DocumentError(source, "binary content (NUL bytes); only text documents are supported", line)
    return decode_bytes(data, source)


def _tidy(text: str) -> str:
    """Normalise extracted (not original) text: LF newlines, no control characters, no trailing blanks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_RE.sub("", text)
    text = _TRAILING_WS_RE.sub("", text)
    return _BLANK_RUN_RE.sub("\n\n", text).strip("\n")


def _looks_binary(data: bytes) -> bool:
    return b"\x00" in data[:65536] and not data.startswith(_UTF16_BOMS)


def _text_from_html(data: bytes, source: str) -> str:
    """Main text with trafilatura; the page title (and a date from its metadata) as a header when missing."""
    if _looks_binary(data):
        raise DocumentError(source, "binary content (NUL bytes); this is not an HTML page")
    import trafilatura

    logging.getLogger("trafilatura").setLevel(logging.ERROR)
    try:
        body = trafilatura.extract(data, include_comments=False, include_tables=True, deduplicate=False)
        if not body:  # very short pages fall under trafilatura's size thresholds: take all visible text
            body = trafilatura.html2txt(data)
        meta = trafilatura.extract_metadata(data, extensive=False)
    except Exception as exc:  # noqa: BLE001 - a parser failure on user input is a 4xx, whatever its type
        raise DocumentError(source, f"cannot parse HTML ({type(exc).__name__}: {exc})") from None
    body = _tidy(body or "")
    if not body.strip():
        raise DocumentError(source, "no text found in this HTML page (empty, or only scripts/markup)")
    # the page title as the first line (Qiao's title rule), then the date from the page's metadata
    title = " ".join((getattr(meta, "title", None) or "").split())
    if title and not body.startswith(title):
        body = f"{title}\n\n{body}"
    date = getattr(meta, "date", None)
    if date and re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) and date not in body[:500]:
        first, _, rest = body.partition("\n")
        body = f"{first}\nDate: {date}\n{rest}"
    return body


class _Stop(BaseException):
    """Raised inside pypdf's callbacks to end a page's extraction early; a BaseException so that
    pypdf's own ``except Exception`` around form XObjects cannot swallow it."""

    def __init__(self, error: DocumentError):
        self.error = error


def _content_key(page) -> tuple | None:
    """Identity of a page's content: the indirect object numbers of its content stream(s) and of
    its resources, or None when they are direct objects (then nothing can be shared)."""
    contents = page.get("/Contents")
    refs = contents if isinstance(contents, list) else [contents]
    ids = []
    for r in refs:
        idnum = getattr(r, "idnum", None)
        if idnum is None:
            return None
        ids.append(idnum)
    res = page.get("/Resources")
    return (tuple(ids), getattr(res, "idnum", None) if res is not None else None)


def _content_bytes(page, seen: set) -> int:
    """Uncompressed bytes of the page's content streams not counted before (shared streams once)."""
    contents = page.get("/Contents")
    refs = contents if isinstance(contents, list) else [contents]
    total = 0
    for r in refs:
        idnum = getattr(r, "idnum", None)
        if idnum is not None:
            if idnum in seen:
                continue
            seen.add(idnum)
        try:
            obj = r.get_object() if hasattr(r, "get_object") else r
            total += len(obj.get_data()) if hasattr(obj, "get_data") else 0
        except Exception:  # noqa: BLE001 - a damaged stream counts as empty; pypdf reports it below
            pass
    return total


def _page_text(page, source: str, limits: ExtractLimits, used: int) -> str:
    """One page's text; stops with TooMuchText as soon as ``used`` + its text passes the budget."""
    count = [used]

    def on_text(text, *_):
        count[0] += len(text)
        if limits.max_chars is not None and count[0] > limits.max_chars:
            raise _Stop(limits.too_much(source))

    ops = [0]

    def on_operator(*_):
        ops[0] += 1
        if ops[0] % 256 == 0:
            try:
                limits.check_time(source)
            except DocumentError as exc:
                raise _Stop(exc) from None

    try:
        return page.extract_text(visitor_text=on_text, visitor_operand_before=on_operator) or ""
    except _Stop as stop:
        raise stop.error from None


def _text_from_pdf(data: bytes, source: str, limits: ExtractLimits | None = None) -> str:
    """Page texts with pypdf, pages separated by a blank line; within ``limits`` (module docstring)."""
    if not data.lstrip()[:5] == b"%PDF-":
        raise DocumentError(source, "not a PDF file (no %PDF- header)")
    from pypdf import PdfReader

    limits = limits or ExtractLimits()
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError(source, "PDF is encrypted with a password; upload an unencrypted copy")
        if limits.max_chars is not None:
            seen: set = set()
            content = 0
            for page in reader.pages:
                content += _content_bytes(page, seen)
                if content > PDF_CONTENT_BYTES_PER_CHAR * limits.max_chars:
                    raise TooMuchText(
                        source,
                        f"the PDF has {content:,} bytes of uncompressed page content, more than can be extracted within "
                        f"the limit of {limits.max_chars:,} characters per upload (QIAO_MAX_EXTRACTED_CHARS); "
                        "split the file into smaller ones",
                    )
                limits.check_time(source)
        pages: list[str] = []
        done: dict[tuple, str] = {}  # content identity -> text, for pages that share a content stream
        used = 0
        for page in reader.pages:
            limits.check_time(source)
            key = _content_key(page)
            if key is not None and key in done:
                text = done[key]
            else:
                text = _page_text(page, source, limits, used)
                if key is not None:
                    done[key] = text
            used += len(text)
            limits.check_chars(source, used)
            pages.append(text)
        title = (reader.metadata.title if reader.metadata else None) or ""
    except DocumentError:
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types for damaged files
        raise DocumentError(source, f"cannot read PDF ({type(exc).__name__}: {exc})") from None
    body = "\n\n".join(t for t in (_tidy(p) for p in pages) if t.strip())
    if not body.strip():
        raise DocumentError(
            source, f"no extractable text in this PDF ({len(pages)} pages; scanned images need OCR first)"
        )
    title = " ".join(str(title).split())
    if title and not body.startswith(title):
        body = f"{title}\n\n{body}"
    return body
