"""Typed configuration slices, built once from :class:`qiao.settings.Settings`.

Components get the slice they need (frozen, so nothing changes it behind their back) instead of
the whole ``Settings`` object; the values, their ranges and their documentation live in
``Settings`` only -- these classes have no defaults of their own, so a component can never run
with a value that disagrees with ``Settings``. Build them with ``XConfig.of(settings)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    from qiao.settings import Settings


@dataclass(frozen=True)
class ChunkConfig:
    """Prose window of the chunker (``Settings.chunk_size`` / ``chunk_overlap``), in characters."""

    size: int
    overlap: int

    @classmethod
    def of(cls, s: Settings) -> ChunkConfig:
        return cls(size=s.chunk_size, overlap=s.chunk_overlap)


@dataclass(frozen=True)
class AnalyserConfig:
    """How text becomes BM25 tokens (``Settings.analyser_*``; part of the index fingerprint)."""

    chinese_mode: Literal["search", "precise"]
    jieba_hmm: bool
    user_dict: bool

    @classmethod
    def of(cls, s: Settings) -> AnalyserConfig:
        return cls(chinese_mode=s.analyser_chinese_mode, jieba_hmm=s.analyser_jieba_hmm, user_dict=s.analyser_user_dict)


@dataclass(frozen=True)
class IndexConfig:
    """What building and loading an index needs."""

    chunk: ChunkConfig
    analyser: AnalyserConfig
    embedder: str
    embed_batch_size: int
    hnsw_threshold: int
    hnsw_m: int
    hnsw_ef_search: int

    @classmethod
    def of(cls, s: Settings) -> IndexConfig:
        return cls(
            chunk=ChunkConfig.of(s), analyser=AnalyserConfig.of(s), embedder=s.embedder, embed_batch_size=s.embed_batch_size,
            hnsw_threshold=s.hnsw_threshold, hnsw_m=s.hnsw_m, hnsw_ef_search=s.hnsw_ef_search,
        )


@dataclass(frozen=True)
class FusionConfig:
    """How BM25 and vector candidates are fused (``Settings.fusion*``, ``rrf_k``, ``weight_*``;
    the formulas are in :mod:`qiao.retriever.fusion`)."""

    method: Literal["calibrated", "rrf"]
    bm25_weight: float
    trust_low: float
    trust_high: float
    lang_renorm: bool
    lang_top: int
    rrf_k: int
    weight_bm25: float
    weight_vector: float
    second_weight: float  # the second embedder, passages in the other language than the query
    second_weight_same: float  # ... in the query's language

    @classmethod
    def of(cls, s: Settings) -> FusionConfig:
        return cls(
            method=s.fusion, bm25_weight=s.fusion_bm25_weight, trust_low=s.fusion_trust_low, trust_high=s.fusion_trust_high,
            lang_renorm=s.fusion_lang_renorm, lang_top=s.fusion_lang_top, rrf_k=s.rrf_k, weight_bm25=s.weight_bm25,
            weight_vector=s.weight_vector, second_weight=s.fusion_second_weight, second_weight_same=s.fusion_second_weight_same,
        )

    @property
    def second_on(self) -> bool:
        """Whether the second embedder takes part in the calibrated fusion."""
        return self.method == "calibrated" and max(self.second_weight, self.second_weight_same) > 0


@dataclass(frozen=True)
class RetrievalConfig:
    """What :class:`qiao.retriever.hybrid.HybridRetriever` needs."""

    candidate_depth: int
    glossary_weight: float
    dedup_threshold: float
    fusion: FusionConfig
    dictionary_weight: float  # CC-CEDICT bridge terms in BM25 queries (index/dictionary.py)

    @classmethod
    def of(cls, s: Settings) -> RetrievalConfig:
        return cls(
            candidate_depth=s.candidate_depth, glossary_weight=s.glossary_weight, dedup_threshold=s.dedup_threshold,
            fusion=FusionConfig.of(s), dictionary_weight=s.dictionary_weight,
        )


@dataclass(frozen=True)
class LLMConfig:
    """The optional chat model that may write /ask answers (off unless ``base_url`` and ``model``)."""

    base_url: str | None
    model: str | None
    api_key: str | None
    timeout: float

    @property
    def enabled(self) -> bool:
        return bool(self.base_url and self.model)

    @classmethod
    def of(cls, s: Settings) -> LLMConfig:
        return cls(base_url=s.llm_base_url, model=s.llm_model, api_key=s.llm_api_key, timeout=s.llm_timeout)


@dataclass(frozen=True)
class QAConfig:
    """What :class:`qiao.qa.pipeline.AnswerEngine` needs."""

    min_evidence: float
    llm: LLMConfig

    @classmethod
    def of(cls, s: Settings) -> QAConfig:
        return cls(min_evidence=s.qa_min_evidence, llm=LLMConfig.of(s))
