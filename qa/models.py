"""What flows through and out of qa/: evidence sentences, citations, answers."""

from __future__ import annotations

from dataclasses import dataclass, field

from qiao.corpus.models import Chunk
from qiao.retriever.models import Hit


@dataclass(frozen=True)
class Sentence:
    """A citable span: one sentence (or noise-free piece of one) of a retrieved chunk.

    Invariant: ``text == documents[doc_id].text[start:end]`` (the ORIGINAL text), with no
    leading/trailing whitespace and no noise inside.
    """

    doc_id: str
    start: int
    end: int
    text: str
    chunk: Chunk  # the chunk it belongs to (gives source, title, date, heading, regions)
    row: int  # row of the chunk in the loaded index
    lang: str  # "en" | "zh" of the sentence itself
    mentions: tuple[str, ...] = ()  # region keys mentioned in the sentence, first-mention order
    context_regions: tuple[str, ...] = ()
    """Regions the sentence's context is about: a timeline entry's own regions; for prose, the
    chunk's and the whole document's (a news item is about its regions in every paragraph)."""

    @property
    def embed_text(self) -> str:
        """Text for the embedder: the chunk's heading and date as context, then the sentence."""
        context = " ".join(p for p in (self.chunk.heading, self.chunk.date) if p)
        return f"{context}\n{self.text}" if context else self.text

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.doc_id, self.start, self.end)


@dataclass(frozen=True)
class ScoredSentence:
    sentence: Sentence
    score: float  # ranking score: relevance plus the answer-type bonus
    semantic: float  # cosine(question, sentence)
    lexical: float  # idf-weighted share of the question's content covered, 0..1
    relevance: float = 0.0  # cosine + lexical - constraint penalties (what abstention compares)
    on_topic: bool = True  # meets the question's region / year constraints (or it names none)
    features: dict = field(default_factory=dict, compare=False)  # each signal on its own (qa/scoring.py)


@dataclass(frozen=True)
class Citation:
    """One numbered citation. ``quote == original_text[start:end]`` of the source file, exactly."""

    id: int
    doc_id: str
    source: str
    title: str
    start: int
    end: int
    quote: str
    date: str | None
    regions: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "doc_id": self.doc_id,
            "source": self.source,
            "title": self.title,
            "start": self.start,
            "end": self.end,
            "quote": self.quote,
            "date": self.date,
            "regions": list(self.regions),
        }


@dataclass
class Answer:
    """The result of :meth:`qa.pipeline.AnswerEngine.ask`.

    ``to_dict()`` is the ``POST /ask`` response. The other fields explain the answer
    (used by the evaluation and the CLI): ``qtype``, ``lang``, ``items`` (region keys of a
    list answer, strongest first; the ISO dates led with for a date question),
    ``evidence_score`` (the best sentence's score, compared with the abstention threshold).
    """

    question: str
    answer: str
    answerable: bool
    citations: list[Citation]
    hits: list[Hit]
    took_ms: float
    qtype: str = "factoid"
    lang: str = "en"
    items: list[str] = field(default_factory=list)
    evidence_score: float = 0.0

    def to_dict(self) -> dict:
        return {
            "question": self.question,
            "answer": self.answer,
            "answerable": self.answerable,
            "citations": [c.to_dict() for c in self.citations],
            "hits": [h.to_dict() for h in self.hits],
            "took_ms": self.took_ms,
        }
