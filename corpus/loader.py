"""Loading documents: bytes -> validated UTF-8 text -> :class:`~corpus.models.Document`.

The decoded text is stored exactly as it is in the file (no newline
translation, a UTF-8 BOM stays as U+FEFF), because every offset in Qiao
points into it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from qiao.errors import Invalid
from qiao.corpus.metadata import extract_metadata
from qiao.corpus.models import Document
from qiao.corpus.visible import has_visible_text

SUPPORTED_SUFFIXES = (".txt", ".md")

# Share of control characters (other than tab / newline / CR / form feed) above which
# a decoded text is considered binary rather than prose.
_MAX_CONTROL_SHARE = 0.1
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # C0 (not tab/LF/FF/CR), DEL, C1


class DocumentError(Invalid):
    """A file (or uploaded text) that cannot become a :class:`Document` (HTTP 422).

    Attributes: ``source`` (file name or path), ``reason`` (why), ``line`` (1-based line
    of the problem when there is one).
    """

    code = "invalid_document"

    def __init__(self, source: str, reason: str, line: int | None = None):
        self.source = source
        self.reason = reason
        self.line = line
        where = f" (line {line})" if line is not None else ""
        super().__init__(f"{source}{where}: {reason}")


@dataclass
class LoadResult:
    """Documents that loaded, and an error for every file that did not."""

    documents: list[Document] = field(default_factory=list)
    errors: list[DocumentError] = field(default_factory=list)


def doc_id_for_bytes(data: bytes) -> str:
    """16 hex characters of the sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()[:16]


def _check_text(text: str, source: str) -> None:
    """Reject binary-looking and empty texts (raises DocumentError)."""
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DocumentError(source, "binary content (NUL characters); only text documents are supported", line)
    if not text.replace("\ufeff", "").strip():
        raise DocumentError(source, "document is empty (no text besides whitespace)")
    controls = sum(1 for _ in _CONTROL_RE.finditer(text))
    if controls > _MAX_CONTROL_SHARE * len(text):
        raise DocumentError(source, "binary content (mostly control characters); only text documents are supported")
    if not has_visible_text(text):
        raise DocumentError(
            source, "document has no visible text (only control, zero-width or whitespace characters); "
            "add readable text or remove the file",
        )


def decode_bytes(data: bytes, source: str) -> str:
    """Strict UTF-8 decoding; errors name the line and byte offset of the first bad byte."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DocumentError(source, "file is UTF-16 encoded; save it as UTF-8")
    try:
        return data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        bad = data[e.start : e.start + 1].hex()
        raise DocumentError(
            source,
            f"not valid UTF-8: byte 0x{bad} at offset {e.start} (line {line}, column {col}); "
            "save the file as UTF-8",
            line,
        ) from None


def _document(text: str, source: str, doc_id: str) -> Document:
    meta = extract_metadata(text, source)
    return Document(
        doc_id=doc_id,
        source=source,
        text=text,
        title=meta["title"],
        lang=meta["lang"],
        date=meta["date"],
        news_source=meta["news_source"],
    )


def load_document(path: Path) -> Document:
    """Read one ``.txt`` / ``.md`` file into a Document (raises DocumentError).

    ``doc_id`` is the sha256 prefix of the file's bytes; ``source`` its file name.
    """
    path = Path(path)
    source = path.name
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DocumentError(
            source, f"unsupported file type {path.suffix or '(none)'!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if path.exists() and not path.is_file() and not path.is_dir():
        # reading a FIFO blocks forever and a device never ends: refuse before opening
        raise DocumentError(source, "not a regular file (a pipe, socket or device); only text files are supported")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DocumentError(source, f"file not found: {path}") from None
    except IsADirectoryError:
        raise DocumentError(source, "is a directory, not a file") from None
    except OSError as e:
        raise DocumentError(source, f"cannot read file: {e.strerror or e}") from None
    if b"\x00" in data and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise DocumentError(source, "binary content (NUL bytes); only text documents are supported", line)
    text = decode_bytes(data, source)
    _check_text(text, source)
    return _document(text, source, doc_id_for_bytes(data))


def document_from_text(text: str, source: str) -> Document:
    """A Document from already-extracted text (uploads); ``doc_id`` from the sha256 of its UTF-8."""
    if not isinstance(text, str):
        raise DocumentError(source, "text must be a str")
    _check_text(text, source)
    data = text.encode("utf-8", errors="surrogatepass")
    return _document(text, source, doc_id_for_bytes(data))


def load_documents(directory: Path) -> LoadResult:
    """Load every ``*.txt`` / ``*.md`` file directly in ``directory`` (sorted by name).

    Bad files are reported in ``errors`` and do not stop the others; a file whose
    bytes duplicate an earlier one is reported too (its doc_id would collide).
    Raises DocumentError when ``directory`` is missing or not a directory.
    """
    directory = Path(directory)
    if not directory.exists():
        raise DocumentError(str(directory), "corpus directory does not exist")
    if not directory.is_dir():
        raise DocumentError(str(directory), "corpus path is not a directory")
    try:
        paths = sorted(
            (p for p in directory.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".")),
            key=lambda p: p.name,
        )
    except OSError as e:
        raise DocumentError(str(directory), f"cannot list directory: {e.strerror or e}") from None
    result = LoadResult()
    seen: dict[str, str] = {}
    for p in paths:
        if p.is_dir():
            continue
        try:
            doc = load_document(p)
        except DocumentError as e:
            result.errors.append(e)
            continue
        if doc.doc_id in seen:
            result.errors.append(DocumentError(doc.source, f"same content as {seen[doc.doc_id]}; skipped"))
            continue
        seen[doc.doc_id] = doc.source
        result.documents.append(doc)
    return result
