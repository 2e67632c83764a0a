"""What flows out of retriever/: filters in, hits out."""

from __future__ import annotations

from dataclasses import dataclass, field

from qiao.corpus.models import Chunk

MODES = ("hybrid", "bm25", "vector")
EVAL_MODES = (*MODES, "vector2")
"""Modes the retriever ranks by: the public ones plus ``vector2``, the second embedder alone
(calibrated per language), which `qiao eval` reports as its own signal."""


@dataclass(frozen=True)
class Filters:
    """Facet filters; ``None`` means "no constraint". Regions are canonical gazetteer keys."""

    lang: tuple[str, ...] | None = None
    region: tuple[str, ...] | None = None
    date_from: str | None = None  # ISO YYYY-MM-DD, inclusive
    date_to: str | None = None  # ISO YYYY-MM-DD, inclusive
    doc_id: tuple[str, ...] | None = None

    def is_empty(self) -> bool:
        return not (self.lang or self.region or self.date_from or self.date_to or self.doc_id)


@dataclass
class Hit:
    """One retrieved chunk with its fused score and its standing in each retriever."""

    rank: int  # 1-based, after fusion
    chunk: Chunk
    score: float  # fused score (or the single retriever's score in bm25/vector mode)
    bm25_score: float | None = None
    vector_score: float | None = None
    bm25_rank: int | None = None  # 1-based rank in the BM25 candidate list, None if not a candidate
    vector_rank: int | None = None
    row: int = field(default=-1, repr=False)  # row in the loaded index

    def to_dict(self) -> dict:
        c = self.chunk
        return {
            "rank": self.rank,
            "chunk_id": c.chunk_id,
            "doc_id": c.doc_id,
            "source": c.source,
            "title": c.title,
            "text": c.text,
            "lang": c.lang,
            "start": c.start,
            "end": c.end,
            "score": round(float(self.score), 6),
            "scores": {
                "bm25": None if self.bm25_score is None else round(float(self.bm25_score), 6),
                "vector": None if self.vector_score is None else round(float(self.vector_score), 6),
            },
            "ranks": {"bm25": self.bm25_rank, "vector": self.vector_rank},
            "date": c.date,
            "regions": list(c.regions),
            "heading": c.heading,
        }
