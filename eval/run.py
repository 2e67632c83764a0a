"""Running a BEIR dataset through Qiao's own retriever, in each mode, and scoring it.

Pipeline (:func:`evaluate`)::

    load_beir(dir) -> Documents (one per BEIR doc, doc_id = BEIR _id, title as first line)
    -> eval index under <data_dir>/eval/<name>-<fingerprint>/  (production chunker, analysers,
       embedder and settings; the production embedding cache, so passages are embedded once)
    -> all query vectors in batches (cached on disk too)
    -> per mode, per query: HybridRetriever.rank(...) with the precomputed vector, once as a
       request for 10 hits (timed; scored by the @10 metrics) and once for 100 (Recall@100)
    -> chunk rows -> BEIR doc ids, a doc scored by its best chunk (first occurrence)
    -> ir-measures: nDCG@10, Recall@10, Recall@100, MRR@10; latency p50/p95; on a sample of
       queries also search(query, k=10) end to end, the query embedded each time

Why the production chunker and not "one chunk per passage": chunk size is one of the settings
we tune on these runs, so the eval must see the chunks production would make. A passage split
into several chunks is represented by its best chunk (max), the usual MaxP convention.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from qiao.corpus.lang import detect_lang
from qiao.corpus.models import Document
from qiao.eval.beir import BeirDataset
from qiao.eval.metrics import METRICS, per_query
from qiao.index.embedders import CachedEmbedder, make_embedder, text_key
from qiao.index.store import LoadedIndex, build_index, current_build, index_fingerprint, load_index
from qiao.retriever.hybrid import HybridRetriever
from qiao.retriever.models import EVAL_MODES

RUN_DEPTH = 100
"""Documents kept per query (Recall@100 needs 100)."""


# ----------------------------------------------------------------------------- documents


def beir_documents(dataset: BeirDataset) -> list[Document]:
    """One :class:`Document` per BEIR doc: ``doc_id`` = ``source`` = the BEIR ``_id``.

    The title becomes the first line of the text (BEIR's usual "title + text"), as the title
    line of a news item does in our own corpus. No release date: BEIR passages have none.
    """
    docs = []
    for d in dataset.corpus.values():
        text = f"{d.title}\n{d.text}" if d.title and d.text else (d.text or d.title)
        docs.append(
            Document(
                doc_id=d.doc_id,
                source=d.doc_id,
                text=text,
                title=d.title or d.text[:60],
                lang=detect_lang(d.text or d.title),
            )
        )
    return docs


def eval_index_dir(dataset: BeirDataset, settings, model_id: str) -> Path:
    """``<data_dir>/eval/<dataset name>-<fingerprint>``: separate from the production index."""
    return Path(settings.data_dir) / "eval" / f"{dataset.name}-{index_fingerprint(settings, model_id, dataset.corpus_sha256)[:12]}"


def ensure_index(
    dataset: BeirDataset,
    settings,
    embedder: CachedEmbedder,
    *,
    rebuild: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> tuple[LoadedIndex, bool]:
    """The eval index of ``dataset`` (built if missing). Returns ``(index, built_now)``."""
    root = eval_index_dir(dataset, settings, embedder.model_id)
    if not rebuild and current_build(root) is not None:
        try:
            return load_index(root, expect_model_id=embedder.model_id, expect_dim=embedder.dim, verify=False, settings=settings), False
        except Exception as exc:  # noqa: BLE001 - a broken eval index is simply rebuilt
            log(f"rebuilding eval index ({exc})")
    docs = beir_documents(dataset)
    report = build_index(docs, embedder, root, settings, progress=progress, log=log)
    log(
        f"eval index: {report.documents} documents -> {report.chunks} chunks "
        f"({report.embedded} embedded, {report.chunks - report.embedded} cached) in {report.seconds:.1f}s at {root}"
    )
    return load_index(root, expect_model_id=embedder.model_id, expect_dim=embedder.dim, verify=False, settings=settings), True


# ----------------------------------------------------------------------------- queries


def embed_queries(
    embedder: CachedEmbedder, texts: Sequence[str], batch_size: int = 32, progress: bool = True
) -> np.ndarray:
    """Query vectors ``(len(texts), dim)`` in batches, through the disk cache (model id + ``|query``),
    so a rerun of the same dataset embeds nothing."""
    model = f"{embedder.model_id}|query"
    keys = [text_key(t) for t in texts]
    cache = getattr(embedder, "cache", None)
    found = cache.get_many(model, keys, embedder.dim) if cache else {}
    todo = list({keys[i]: i for i in range(len(texts)) if keys[i] not in found}.values())
    inner = getattr(embedder, "inner", embedder)
    with tqdm(total=len(todo), desc="embedding queries", unit="query", disable=not progress or not todo) as bar:
        for i in range(0, len(todo), batch_size):
            batch = todo[i : i + batch_size]
            vecs = inner.embed_queries([texts[j] for j in batch])
            new = {keys[j]: v for j, v in zip(batch, vecs)}
            found.update(new)
            if cache:
                cache.put_many(model, new)
            bar.update(len(batch))
    if not texts:
        return np.zeros((0, embedder.dim), np.float32)
    return np.ascontiguousarray(np.stack([found[k] for k in keys]).astype(np.float32))


# ----------------------------------------------------------------------------- running


@dataclass
class ModeResult:
    mode: str
    metrics: dict[str, float]  # METRICS names -> mean over queries
    latency_ms: dict[str, float]  # retrieval with the query vector given: p50, p95, mean
    e2e_latency_ms: dict[str, float] | None = None  # HybridRetriever.search(query, k=10), query embedded each time
    per_query: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)


@dataclass
class EvalResult:
    dataset: str
    path: str
    queries: int
    documents: int
    chunks: int
    modes: list[ModeResult]
    settings: dict
    index_dir: str
    index_built: bool
    seconds: float
    sample: int | None = None  # queries sampled, when not all were run
    e2e_sample: int = 0

    def to_dict(self, per_query_results: bool = False) -> dict:
        d = asdict(self)
        for m in d["modes"]:
            if not per_query_results:
                m.pop("per_query")
        return d


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    if not values_ms:
        return {"p50": 0.0, "p95": 0.0, "mean": 0.0}
    a = np.asarray(values_ms, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "mean": round(float(a.mean()), 3),
    }


def rows_to_docs(index: LoadedIndex, rows: Sequence[int], limit: int = RUN_DEPTH) -> list[str]:
    """Ranked chunk rows -> ranked distinct doc ids (a doc at the rank of its best chunk)."""
    seen: dict[str, None] = {}
    chunks = index.chunks
    for r in rows:
        d = chunks[int(r)].doc_id
        if d not in seen:
            seen[d] = None
            if len(seen) >= limit:
                break
    return list(seen)


def run_mode(
    retriever: HybridRetriever,
    query_ids: Sequence[str],
    query_texts: Sequence[str],
    query_vectors: np.ndarray,
    mode: str,
    *,
    k: int = 10,
    depth_docs: int = RUN_DEPTH,
    progress: bool = True,
    query_vectors2: np.ndarray | None = None,
) -> tuple[dict[str, list[str]], dict[str, list[str]], list[float]]:
    """``(run_k, run_deep, latencies_ms)`` for one mode.

    ``run_k``: each query's ranking from a request for ``k`` hits (candidate depth as the API
    uses it for k=10), scored by the @10 metrics; ``run_deep``: from a request for ``depth_docs``
    hits, scored by Recall@100 (the same run when ``candidate_depth`` already covers it).
    Latency is timed on the ``k`` request.
    """
    run_k: dict[str, list[str]] = {}
    run_deep: dict[str, list[str]] = {}
    times: list[float] = []
    index = retriever.index
    same = retriever.depth(k) >= retriever.depth(depth_docs)
    # the second embedder's query vectors (None: the retriever embeds them itself when it uses them)
    qv2s = list(query_vectors2) if query_vectors2 is not None else [None] * len(query_ids)
    for qid, text, qv, qv2 in tqdm(
        list(zip(query_ids, query_texts, query_vectors, qv2s)), desc=f"{mode:>6}", unit="query", disable=not progress, leave=False
    ):
        t0 = time.perf_counter()
        ranked = retriever.rank(text, k=k, mode=mode, query_vector=qv, query_vector2=qv2)
        times.append((time.perf_counter() - t0) * 1000)
        run_k[qid] = rows_to_docs(index, [r for r, _ in ranked], depth_docs)
        if same:
            run_deep[qid] = run_k[qid]
        else:
            deep = retriever.rank(text, k=depth_docs, mode=mode, query_vector=qv, query_vector2=qv2)
            run_deep[qid] = rows_to_docs(index, [r for r, _ in deep], depth_docs)
    return run_k, run_deep, times


def score_runs(qrels, run_k, run_deep) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """``(means, per_query)``: @10 metrics from ``run_k``, Recall@100 from ``run_deep``."""
    pq = per_query(qrels, run_k)
    deep = per_query(qrels, run_deep)
    for q, m in pq.items():
        m["Recall@100"] = deep[q]["Recall@100"]
    n = max(len(pq), 1)
    means = {name: sum(v[name] for v in pq.values()) / n for name in METRICS}
    return means, pq


def e2e_latency(retriever: HybridRetriever, texts: Sequence[str], mode: str, k: int = 10) -> list[float]:
    """Milliseconds of ``retriever.search(text, k, mode)`` per text, the query embedded every time
    (the in-memory query cache is bypassed), i.e. what ``/search`` spends inside the retriever."""
    times = []
    inner = getattr(retriever.embedder, "inner", None)
    for t in texts:
        if inner is not None:
            retriever.embedder.forget_queries([t])  # measure a cold query
            second = getattr(retriever.embedder, "second", None)
            if second is not None:
                second.forget_queries([t])
        t0 = time.perf_counter()
        retriever.search(t, k=k, mode=mode)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def sample_queries(dataset: BeirDataset, n: int | None, seed: int = 13) -> list[str]:
    """All judged query ids in file order, or a fixed seeded sample of ``n`` of them."""
    ids = list(dataset.queries)
    if n is None or n <= 0 or n >= len(ids):
        return ids
    rng = random.Random(seed)
    keep = set(rng.sample(ids, n))
    return [q for q in ids if q in keep]


def evaluate(
    dataset: BeirDataset,
    settings,
    modes: Sequence[str] | None = None,
    *,
    embedder: CachedEmbedder | None = None,
    sample: int | None = None,
    e2e_sample: int = 100,
    rebuild: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> EvalResult:
    """Index ``dataset`` (or reuse its eval index), run every (or a sample of) query in each mode, score.

    ``e2e_sample``: how many queries (seeded sample) also get the full single-query path timed.
    ``modes``: default every signal on its own (bm25, vector, and vector2 when the index holds the
    second embedder's vectors), then hybrid.
    """
    for m in modes or ():
        if m not in EVAL_MODES:
            raise ValueError(f"unknown mode {m!r}; use one of {', '.join(EVAL_MODES)}")
    t0 = time.perf_counter()
    embedder = embedder or make_embedder(settings, settings.cache_dir)
    index, built = ensure_index(dataset, settings, embedder, rebuild=rebuild, progress=progress, log=log)
    retriever = HybridRetriever(index, embedder, settings)
    second = retriever.second_embedder
    if modes is None:
        modes = ["bm25", "vector", *(["vector2"] if second is not None else []), "hybrid"]

    qids = sample_queries(dataset, sample)
    texts = [dataset.queries[q] for q in qids]
    qvecs = embed_queries(embedder, texts, settings.embed_batch_size, progress=progress)
    qvecs2 = embed_queries(second, texts, settings.embed_batch_size, progress=progress) if second is not None else None
    qrels = {q: dataset.qrels[q] for q in qids}
    e2e_texts = [dataset.queries[q] for q in sample_queries(dataset, e2e_sample, seed=7)] if e2e_sample else []

    results = []
    for mode in modes:
        run_k, run_deep, times = run_mode(retriever, qids, texts, qvecs, mode, progress=progress, query_vectors2=qvecs2)
        metrics, pq = score_runs(qrels, run_k, run_deep)
        e2e = percentiles(e2e_latency(retriever, e2e_texts, mode)) if e2e_texts else None
        results.append(ModeResult(mode, {k: round(v, 4) for k, v in metrics.items()}, percentiles(times), e2e, pq))
        log(f"{mode}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return EvalResult(
        dataset=dataset.name,
        path=str(dataset.path),
        queries=len(qids),
        documents=len(dataset.corpus),
        chunks=index.size,
        modes=results,
        settings=eval_settings(settings),
        index_dir=str(index.path),
        index_built=built,
        seconds=round(time.perf_counter() - t0, 1),
        sample=len(qids) if len(qids) < len(dataset.queries) else None,
        e2e_sample=len(e2e_texts),
    )


def eval_settings(settings) -> dict:
    """The settings that shape retrieval results (recorded with every result)."""
    keys = [k for k in type(settings).model_fields if k in _RETRIEVAL_KEYS]
    out = {k: getattr(settings, k) for k in keys}
    out["embedder"] = settings.embedder
    return json.loads(json.dumps(out, default=str))


_RETRIEVAL_KEYS = {
    "embedder",
    "st_model",
    "chunk_size",
    "chunk_overlap",
    "fusion",
    "fusion_bm25_weight",
    "fusion_trust_low",
    "fusion_trust_high",
    "fusion_lang_renorm",
    "fusion_lang_top",
    "rrf_k",
    "weight_bm25",
    "weight_vector",
    "candidate_depth",
    "glossary_weight",
    "hnsw_threshold",
    "second_embedder",
    "fusion_second_weight",
    "fusion_second_weight_same",
    "dictionary_weight",
}

__all__ = [
    "METRICS",
    "EvalResult",
    "ModeResult",
    "beir_documents",
    "embed_queries",
    "ensure_index",
    "eval_index_dir",
    "evaluate",
    "rows_to_docs",
]
