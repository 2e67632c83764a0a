"""The search backend interface: what ``retriever/`` and ``qa/`` may ask of an index.

A backend holds the chunks of one index snapshot as *rows* ``0..n-1`` (row ``i`` is
``chunks[i]`` everywhere: vectors, BM25 documents, metadata arrays) and answers

* **dense search** -- top ``k`` rows by inner product (= cosine, vectors are L2-normalised)
  for one query vector, optionally restricted to one language and/or to an allowed-row mask;
* **lexical search** -- the BM25 (Lucene variant) score of every row for analysed query tokens;
* **term statistics** -- document frequency, Lucene idf and the score of a full lexical match
  (:class:`TermStats`), which fusion (BM25 trust) and QA (coverage weights) need;
* **vectors of given rows**, **stored vectors of QA units by text** (index/units.py), **chunk
  metadata** (chunks, documents, per-row language / doc id / date arrays) and a **filter selection** (allowed-row mask for language, doc id, region, dates);
* **add / delete** of chunks in memory (a new build on disk stays the job of ``index.store``).

FAISS + bm25s implement it today (:class:`qiao.index.store.LoadedIndex`); another engine
(Milvus, a remote service) implements the same methods and the retriever, the fusion and the
QA pipeline work unchanged. Everything above ``index/`` types against :class:`SearchBackend`
and never touches FAISS or bm25s objects.

Shapes follow the bm25s convention: ``n`` = number of rows, ``dim`` = vector dimension,
``m`` = number of results (``m <= k``); row ids are ``int64``, scores ``float32``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from qiao.corpus.models import Chunk, Document

BM25_K1 = 1.2
"""bm25s' (and Lucene's) default term-frequency saturation; the index is built with it."""
BM25_B = 0.75
"""Length normalisation; the index is built with it."""


@dataclass(frozen=True)
class TermStats:
    """Corpus statistics of analysed tokens over the ``n`` rows of a backend.

    ``df(t)``: rows containing token ``t`` (0 for a token the index never saw).
    ``idf(t) = ln(1 + (n - df + 0.5) / (df + 0.5))`` -- Lucene's idf, the one bm25s' ``lucene``
    method scores with, so these statistics agree with :meth:`SearchBackend.lexical_scores`.
    ``full_match_mass(tokens)``: BM25 score of a passage of average length holding each distinct
    token once: ``sum(idf) / (1 + k1)`` (with tf = 1 and dl = avgdl, Lucene BM25's term score is
    ``idf * tf / (tf + k1)``).
    """

    n: int
    vocab: Mapping[str, int]  # token -> column of ``doc_freq``
    doc_freq: np.ndarray  # (len(vocab),) int64
    k1: float = BM25_K1
    _idf_cache: dict[str, float] = field(default_factory=dict, repr=False, compare=False)

    def df(self, token: str) -> int:
        tid = self.vocab.get(token)
        return int(self.doc_freq[tid]) if tid is not None and tid < len(self.doc_freq) else 0

    def idf(self, token: str) -> float:
        v = self._idf_cache.get(token)
        if v is None:
            df = self.df(token)
            v = math.log(1.0 + (max(self.n, 1) - df + 0.5) / (df + 0.5))
            self._idf_cache[token] = v
        return v

    def full_match_mass(self, tokens: Sequence[str]) -> float:
        total = 0.0
        n = float(self.n)
        for t in set(tokens):
            df = float(self.df(t))
            total += float(np.log(1.0 + (n - df + 0.5) / (df + 0.5)))
        return total / (1.0 + float(self.k1))


@runtime_checkable
class SearchBackend(Protocol):
    """One searchable snapshot of the index (see the module docstring for rows and shapes).

    Implementations must be safe for concurrent reads (the server searches from many threads);
    :meth:`add_chunks` / :meth:`delete_documents` need no concurrent reader (the service swaps
    whole snapshots).
    """

    # --- chunk metadata ------------------------------------------------------------------
    @property
    def size(self) -> int:
        """``n``, the number of chunk rows."""
        ...

    @property
    def dim(self) -> int:
        """Dimension of the stored vectors."""
        ...

    @property
    def chunks(self) -> Sequence[Chunk]:
        """Row ``i`` -> its :class:`Chunk`, ``len == n``."""
        ...

    @property
    def documents(self) -> Mapping[str, Document]:
        """doc_id -> :class:`Document` of every indexed document, in corpus order."""
        ...

    @property
    def chunk_lang(self) -> np.ndarray:
        """``(n,)`` ``'<U2'``: language code ("en" / "zh") of each row."""
        ...

    @property
    def chunk_doc(self) -> np.ndarray:
        """``(n,)`` str: doc_id of each row."""
        ...

    @property
    def languages(self) -> list[str]:
        """The distinct languages of the rows, sorted."""
        ...

    def region_keys(self) -> list[str]:
        """Canonical gazetteer keys of the regions some chunk is tagged with."""
        ...

    def select_rows(
        self,
        *,
        lang: Sequence[str] | None = None,
        doc_id: Sequence[str] | None = None,
        region: Sequence[str] | None = None,
        date_from: str | None = None,
        date_to: str | None = None,
    ) -> np.ndarray | None:
        """Allowed-row mask ``(n,)`` bool of the rows passing every given facet (regions: any of
        the canonical keys; dates ``YYYY-MM-DD``, inclusive, undated rows fail a date facet), or
        ``None`` when no facet is given (all rows allowed)."""
        ...

    # --- dense ---------------------------------------------------------------------------
    def dense_search(
        self, query_vector: np.ndarray, k: int, *, lang: str | None = None, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows for one query vector ``(dim,)`` by inner product, best first.

        ``lang``: only rows of that language; ``allowed``: optional ``(n,)`` bool mask.
        Returns ``(rows, scores)``, shapes ``(m,)`` int64 and ``(m,)`` float32, ``m <= k``
        (``m == 0`` when nothing is allowed).
        """
        ...

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors of ``rows`` (``(m,)`` int), shape ``(m, dim)`` float32, in that order."""
        ...

    # --- vectors of the QA units, stored at build time (qiao.index.units) -------------------
    def unit_kinds(self) -> dict[str, str]:
        """Embedder kinds with stored unit vectors (``primary``, ``second``) -> their model ids; ``{}``
        when the index stores none."""
        ...

    def unit_vectors(self, texts: Sequence[str], kind: str = "primary") -> tuple[np.ndarray, np.ndarray]:
        """Stored vectors of these unit texts by that embedder: ``(m, dim)`` float32 (zero rows where
        none is stored) and a ``(m,)`` bool mask of the found ones. Keyed by the text, so a found
        vector is always exactly that text's."""
        ...

    # --- lexical -------------------------------------------------------------------------
    def lexical_scores(
        self, tokens: Sequence[str], extra: Sequence[str] = (), extra_weight: float = 0.0
    ) -> np.ndarray:
        """BM25 score of every row, shape ``(n,)`` float32: ``bm25(tokens) + extra_weight *
        bm25(extra)`` (query tokens plus down-weighted bridge tokens). All zeros when no token
        is in the vocabulary."""
        ...

    def term_stats(self) -> TermStats:
        """Document frequencies and idf of the lexical index (cached; cheap to call again)."""
        ...

    # --- updates (in memory) -------------------------------------------------------------
    def add_chunks(self, chunks: Sequence[Chunk], vectors: np.ndarray, tokens: Sequence[Sequence[str]], documents: Sequence[Document] = ()) -> None:
        """Append ``chunks`` as rows ``n..n+len-1`` with their ``(len, dim)`` normalised vectors and
        analysed BM25 tokens (and register their ``documents``)."""
        ...

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Remove every row of these documents (and the documents); the remaining rows are
        renumbered ``0..n'-1`` in their old order. Returns the number of rows removed."""
        ...
