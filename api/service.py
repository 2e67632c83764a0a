"""The running state behind the API and the CLI: settings, embedder, current index, retriever.

The index and retriever are swapped together as one immutable snapshot, so a
request always sees a consistent pair while a rebuild swaps in a new one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from corpus.loader import LoadResult, load_documents
from index.embedders import CachedEmbedder, make_embedder
from index.store import BuildReport, IndexLoadError, LoadedIndex, build_index, load_index, stale_reason
from retriever.hybrid import HybridRetriever


@dataclass(frozen=True)
class Snapshot:
    index: LoadedIndex
    retriever: HybridRetriever


def collect_documents(settings) -> LoadResult:
    """All documents of the corpus directory (bad files are reported in ``errors``, the rest load)."""
    return load_documents(Path(settings.corpus_dir))


class QiaoService:
    def __init__(self, settings):
        self.settings = settings
        self._embedder: CachedEmbedder | None = None
        self._embedder_lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self.load_error: str | None = None

    @property
    def embedder(self) -> CachedEmbedder:
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = make_embedder(self.settings, self.settings.cache_dir)
            return self._embedder

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def load(self) -> Snapshot:
        """Load the current index from disk and make it the serving snapshot."""
        emb = self.embedder
        try:
            index = load_index(self.settings.index_dir, expect_model_id=emb.model_id, expect_dim=emb.dim)
        except IndexLoadError as exc:
            self.load_error = str(exc)
            raise
        snap = Snapshot(index, HybridRetriever(index, emb, self.settings))
        self._snapshot = snap
        self.load_error = None
        return snap

    def try_load(self) -> Snapshot | None:
        try:
            return self.load()
        except IndexLoadError:
            return None

    def stale_reason(self, documents) -> str | None:
        return stale_reason(self.settings.index_dir, documents, self.settings, self.embedder.model_id)

    def build(self, documents, progress: bool = True, log: Callable[[str], None] = lambda s: None, **kw) -> BuildReport:
        report = build_index(documents, self.embedder, self.settings.index_dir, self.settings, progress=progress, log=log, **kw)
        self.load()
        return report
