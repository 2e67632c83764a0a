"""What flows out of corpus/: documents and their chunks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Document:
    """One source file, decoded.

    ``text`` is the original text exactly as decoded from the file (or, for
    uploaded HTML/PDF, the stored extracted text); every offset in Qiao points
    into it.
    """

    doc_id: str  # stable: 16 hex chars of the sha256 of the file's bytes
    source: str  # file name
    text: str
    title: str
    lang: str  # "en" | "zh"
    date: str | None = None  # release date, ISO YYYY-MM-DD, when the document states one
    news_source: str | None = None  # the "News source: ..." line

    def metadata(self) -> dict:
        d = asdict(self)
        d.pop("text")
        d["chars"] = len(self.text)
        return d


@dataclass(frozen=True)
class Chunk:
    """A retrievable span of a document.

    Invariant: ``document.text[start:end]`` is the span the chunk came from;
    ``text`` is that span, possibly with noise removed (what we index and show).
    """

    chunk_id: str  # f"{doc_id}:{ordinal:04d}"
    doc_id: str
    source: str
    title: str
    start: int
    end: int
    text: str
    lang: str  # "en" | "zh"
    kind: str = "prose"  # "prose" | "timeline"
    date: str | None = None  # ISO date of a timeline entry (or the document's release date)
    heading: str | None = None  # region / section heading the chunk sits under
    regions: tuple[str, ...] = field(default_factory=tuple)  # canonical region names (gazetteer keys)

    @property
    def embed_text(self) -> str:
        """Text given to the embedder: the heading and date as context, then the text."""
        context = " ".join(p for p in (self.heading, self.date) if p)
        return f"{context}\n{self.text}" if context else self.text
