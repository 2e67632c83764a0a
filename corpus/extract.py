"""Text out of uploaded files: ``.txt`` / ``.md`` (loader rules), ``.html`` (trafilatura), ``.pdf`` (pypdf).

The extracted text is what Qiao stores and what every offset of an uploaded
document points into, so it is produced once, here, and never re-derived.
Every error is a :class:`~corpus.loader.DocumentError` whose ``source`` is the
uploaded file's name.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

from qiao.errors import Unsupported
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


class UnsupportedFileType(DocumentError, Unsupported):
    """The file's type (by extension) is not one Qiao can extract text from (HTTP 415)."""

    code = Unsupported.code
    http_status = Unsupported.http_status


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


def extract(data: bytes, filename: str | None) -> Extracted:
    """Extract the text of one uploaded file (raises DocumentError / UnsupportedFileType naming the file)."""
    source = safe_filename(filename)
    kind = kind_of(source)
    if not data:
        raise DocumentError(source, "file is empty (0 bytes)")
    if kind == "text":
        text = _text_from_plain(data, source)
    elif kind == "html":
        text = _text_from_html(data, source)
    else:
        text = _text_from_pdf(data, source)
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


def _text_from_pdf(data: bytes, source: str) -> str:
    """Page texts with pypdf, pages separated by a blank line."""
    if not data.lstrip()[:5] == b"%PDF-":
        raise DocumentError(source, "not a PDF file (no %PDF- header)")
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError(source, "PDF is encrypted with a password; upload an unencrypted copy")
        pages = [page.extract_text() or "" for page in reader.pages]
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
