"""Milvus as the search backend: the same rows, the same BM25, the same fusion on top.

``QIAO_BACKEND=milvus`` keeps Qiao's index directory (manifest, documents, chunks: the *catalog*)
and moves what is searched into one Milvus collection; ``QIAO_MILVUS_URI`` is a file path
(embedded milvus-lite, the default ``<data_dir>/milvus.db``) or ``http(s)://host:19530`` (a Milvus
server or cluster, ``QIAO_MILVUS_TOKEN`` for its credentials). :class:`MilvusIndex` implements
:class:`qiao.index.backend.SearchBackend`, so the retriever, the calibrated fusion and the QA
pipeline run unchanged.

Collection (one per index; name ``<prefix>_<sha256(index settings, index dir)[:16]>_g<generation>``,
so an index built with other settings -- embedder, chunking, analysers, backend -- never reads it)::

    pk       INT64 primary key   first 63 bits of sha256(chunk_id): stable across builds, so
                                 adding or removing a document writes / deletes only its rows
    doc_id   VARCHAR             facet filters as Milvus expressions:
    lang     VARCHAR               lang in [...], doc_id in [...],
    regions  ARRAY<VARCHAR>        array_contains_any(regions, [...]),
    date     INT32 (yyyymmdd)      date > 0 and date >= lo and date <= hi (undated rows fail)
    dense    FLOAT_VECTOR(dim)   the embedder's L2-normalised vectors, metric IP (= cosine);
                                 FLAT up to QIAO_HNSW_THRESHOLD rows, HNSW above (M, ef as FAISS)
    sparse   SPARSE_FLOAT_VECTOR BM25 document weights over Qiao's own analysis (below)

**Lexical side.** Milvus's built-in BM25 function analyses text with its own tokenizer; Qiao's
analysis (NFKC, OpenCC Traditional->Simplified, jieba with the domain dictionary, English
stemming, stop words, glossary bridge terms) would not match. So the analysed tokens are written
as sparse vectors whose inner product with a query vector *is* bm25s' Lucene BM25::

    doc weight   w(t, d) = tf / (tf + k1 * (1 - b + b * |d| / avgdl_ref))
    query weight q(t)    = idf(t) * count_q(t) + glossary_weight * idf(t) * count_bridge(t)
    idf(t)               = ln(1 + (n - df + 0.5) / (df + 0.5))
    q . w(d)             = bm25(tokens, d) + glossary_weight * bm25(bridge, d)

(k1 = 1.2, b = 0.75 as bm25s). The query side is linear, so the bridge terms' down-weighting is
exact in one search. Token ids and document frequencies (the vocabulary, ``terms.json``) live
in the index directory beside the catalog: idf, the full-match mass (BM25 trust) and QA's
coverage weights come from there (:class:`~qiao.index.backend.TermStats`). ``avgdl_ref`` is the
mean analysed length when the collection's weights were written; an incremental update keeps it
until the real mean drifts by more than ``QIAO_MILVUS_AVGDL_TOLERANCE`` (2 %: the length term
``b * |d| / avgdl`` then moves by at most 1.5 %), then writes a new generation of the collection
with exact weights. A fresh build is exact: the eval compares the two backends on fresh builds.

**Top-k lexical search.** The protocol's :meth:`MilvusIndex.lexical_scores` returns a score for
every row; from Milvus that costs a search returning every matching row (~75 us per returned
row on milvus-lite here: 0.2 s for 3,000). The retriever therefore uses
:meth:`MilvusIndex.lexical_search` (top ``depth`` rows, facet filter inside Milvus; the query,
glossary and dictionary terms as one weighted sparse query, exact because the score is linear
in the query weights), then :meth:`MilvusIndex.lexical_scores_of` (the exact BM25 of the other
candidates: a sparse search restricted to their primary keys) and :meth:`MilvusIndex.cosines_of`
(the cosine of candidates the dense searches did not return: a dense search restricted to
theirs): the fused scores are the ones FAISS' full arrays give.

**What a search returns.** Primary keys and scores only, never vectors: milvus-lite builds a
hit's reply in Python, and a 384-float vector per hit was two thirds of a dense search's server
time (profiled: 1.15M generator steps for 3,000 hits); the near-duplicate check reads the ~2k
vectors it needs in one :meth:`MilvusIndex.vectors` request. A hybrid ``/search`` is 6 calls:
BM25 top rows, one dense search per language, the two restricted scorings, one vector read.

**Writes.** ``build_index`` writes a new catalog aside as for FAISS; :func:`write_rows` upserts
the rows the collection lacks (or a whole new generation) *before* the catalog switch and
:func:`finish_write` deletes the rows the new catalog lacks and old generations *after* it. Readers map primary keys to their own catalog's rows
and skip unknown ones, so a crash at any point leaves the current catalog searchable and the
next build removes the leftovers. Bad configuration (unreachable URI, refused token, a milvus-lite
file held by another process, a missing or foreign collection) is one :class:`MilvusError`
line naming the setting to fix; nothing is written before the connection is checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qiao.corpus.models import Chunk
from qiao.index.backend import BM25_B, BM25_K1, TermStats
from qiao.index.store import IndexLoadError, LoadedIndex

logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # we turn every error into one line ourselves

TERMS_FILE = "terms.json"
MAX_TOPK = 16384
"""Milvus' largest ``limit`` of one search."""
EMPTY_DIM = 2**32 - 2
"""Sparse dimension of a chunk without tokens (Milvus rejects empty sparse vectors); no query uses it."""
WRITE_BATCH = 512
_LOCAL_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")


class MilvusError(IndexLoadError):
    """Milvus is misconfigured or unreachable; the message (one line) says which setting to fix."""


def pk_of(chunk_id: str) -> int:
    """Stable 63-bit primary key of a chunk."""
    return int.from_bytes(hashlib.sha256(chunk_id.encode()).digest()[:8], "big") & (2**63 - 1)


def is_remote(uri: str) -> bool:
    return uri.startswith(_LOCAL_SCHEMES)


def collection_name(settings, root: Path) -> str:
    """``<prefix>_<16 hex>`` from the index settings (embedder, chunking, analysis pipeline, backend)
    and the index directory ``root``: a collection built with other settings, or for another index
    (the eval indexes, another deployment on the same server), is never read."""
    from qiao.index.store import index_settings

    key = json.dumps({"settings": index_settings(settings), "root": str(Path(root).resolve())}, sort_keys=True)
    return f"{settings.milvus_collection_prefix}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


# --- connection ---------------------------------------------------------------------------------

_clients: dict[tuple[str, str], object] = {}
_clients_lock = threading.Lock()


def connect(settings):
    """One :class:`pymilvus.MilvusClient` per (URI, token) and process; checked with one request."""
    uri = settings.milvus_target
    token = settings.milvus_token or ""
    key = (uri, token)
    with _clients_lock:
        client = _clients.get(key)
        if client is not None:
            return client
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise MilvusError("QIAO_BACKEND=milvus needs pymilvus: pip install 'qiao[milvus]' (pymilvus, milvus-lite)") from None
        if not is_remote(uri):
            # milvus-lite's in-process gRPC server logs every call it lacks (AllocTimestamp, asked by
            # pymilvus' query iterator, which then falls back to a client timestamp) as an error
            logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
            path = Path(uri).expanduser()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MilvusError(f"cannot create the milvus-lite file {path} ({exc.strerror}): check QIAO_MILVUS_URI") from None
            target = str(path.resolve())
        else:
            target = uri
        try:
            client = MilvusClient(uri=target, token=token, timeout=settings.milvus_timeout)
            client.list_collections()
        except Exception as exc:  # noqa: BLE001 - pymilvus raises many types for the same few causes
            raise MilvusError(_explain(exc, uri)) from None
        _clients[key] = client
        return client


def _explain(exc: Exception, uri: str) -> str:
    text = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
    low = text.lower()
    if not is_remote(uri):
        cause = exc.__cause__ or exc.__context__
        if "lock" in low or (cause is not None and "lock" in str(cause).lower()) or "open local milvus failed" in low:
            return (
                f"the milvus-lite file {uri} is open in another process (milvus-lite serves one process): stop it, "
                "or set QIAO_MILVUS_URI to a Milvus server"
            )
        return f"cannot open the milvus-lite file {uri} ({text.splitlines()[0][:200]}): check QIAO_MILVUS_URI"
    if _refused_credentials(exc) or any(w in low for w in ("auth", "credential", "password", "token", "unauthenticated", "permission", "denied")):
        return f"Milvus at {uri} refused the credentials: check QIAO_MILVUS_TOKEN"
    return f"cannot reach Milvus at {uri} ({text.splitlines()[0][:200]}): check QIAO_MILVUS_URI and that the server is running"


def _refused_credentials(exc: BaseException) -> bool:
    """A gRPC UNAUTHENTICATED / PERMISSION_DENIED anywhere in the cause chain: pymilvus reports a
    refused token at connection time as "Fail connecting to server ... or server unavailable"
    with the gRPC error as its cause (tests/unit/index/test_milvus_server.py)."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 10:
        code = getattr(cur, "code", None)
        if callable(code):
            try:
                name = getattr(code(), "name", "")
            except Exception:  # noqa: BLE001 - a .code() of another signature
                name = ""
            if name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                return True
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return False


def _call(settings, what: str, fn, *args, **kw):
    """Run one client call; any failure becomes a one-line :class:`MilvusError`."""
    try:
        return fn(*args, **kw)
    except MilvusError:
        raise
    except Exception as exc:  # noqa: BLE001
        msg = str(getattr(exc, "message", None) or exc).splitlines()[0][:300]
        raise MilvusError(f"Milvus at {settings.milvus_target} failed to {what} ({msg}): run `qiao index` to rebuild, or check QIAO_MILVUS_URI") from None


# --- vocabulary and document frequencies ---------------------------------------------------------


@dataclass
class Terms:
    """Token ids (stable across incremental builds: ids are never reused) and the statistics of
    the current rows. ``avgdl_ref``: the mean length the stored document weights were computed with."""

    vocab: list[str]
    df: np.ndarray  # (len(vocab),) int64
    n: int
    avgdl: float
    avgdl_ref: float
    index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {t: i for i, t in enumerate(self.vocab)}

    @classmethod
    def build(cls, tokens: Sequence[Sequence[str]], base: "Terms | None" = None) -> "Terms":
        vocab = list(base.vocab) if base is not None else []
        index = dict(base.index) if base is not None else {}
        df_counter: Counter[int] = Counter()
        total = 0
        for toks in tokens:
            total += len(toks)
            for t in set(toks):
                tid = index.get(t)
                if tid is None:
                    tid = index[t] = len(vocab)
                    vocab.append(t)
                df_counter[tid] += 1
        df = np.zeros(len(vocab), np.int64)
        if df_counter:
            ids = np.fromiter(df_counter.keys(), np.int64, len(df_counter))
            df[ids] = np.fromiter(df_counter.values(), np.int64, len(df_counter))
        n = len(tokens)
        avgdl = total / n if n else 1.0
        return cls(vocab, df, n, avgdl, avgdl, index)

    def extended(self, tokens: Sequence[Sequence[str]], sign: int) -> "Terms":
        """A copy with these rows' tokens added (``sign`` +1) or removed (-1); ``avgdl_ref`` kept."""
        vocab, index, df = list(self.vocab), dict(self.index), self.df.copy()
        new_ids = []
        for toks in tokens:
            for t in set(toks):
                tid = index.get(t)
                if tid is None:
                    tid = index[t] = len(vocab)
                    vocab.append(t)
                new_ids.append(tid)
        if len(vocab) > len(df):
            df = np.concatenate([df, np.zeros(len(vocab) - len(df), np.int64)])
        np.add.at(df, np.asarray(new_ids, np.int64), sign)
        n = self.n + sign * len(tokens)
        total = self.avgdl * self.n + sign * sum(len(t) for t in tokens)
        return Terms(vocab, np.maximum(df, 0), n, total / n if n > 0 else 1.0, self.avgdl_ref, index)

    def stats(self) -> TermStats:
        return TermStats(n=self.n, vocab=self.index, doc_freq=self.df, k1=BM25_K1)

    def save(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"vocab": self.vocab, "df": self.df.tolist(), "n": self.n, "avgdl": self.avgdl, "avgdl_ref": self.avgdl_ref}, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def load(cls, path: Path) -> "Terms":
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(list(raw["vocab"]), np.asarray(raw["df"], np.int64), int(raw["n"]), float(raw["avgdl"]), float(raw["avgdl_ref"]))

    def doc_vector(self, toks: Sequence[str]) -> dict[int, float]:
        """Sparse BM25 document weights ``w(t, d)`` (module docstring)."""
        if not toks:
            return {EMPTY_DIM: 1e-12}
        norm = BM25_K1 * (1.0 - BM25_B + BM25_B * len(toks) / self.avgdl_ref)
        return {self.index[t]: float(np.float32(tf / (tf + norm))) for t, tf in Counter(toks).items()}

    def query_vector(
        self, tokens: Sequence[str], extra: Sequence[str] = (), extra_weight: float = 0.0,
        more: Sequence[tuple[Sequence[str], float]] = (),
    ) -> dict[int, float]:
        """Sparse query weights ``q(t)``; tokens the rows never saw are left out (they score 0).

        ``more``: further ``(tokens, weight)`` groups (the dictionary bridge): the score is linear
        in the query weights, so ``q . w(d)`` is the weighted sum of the groups' BM25 scores."""
        stats = self.stats()
        out: dict[int, float] = {}
        groups = ((tokens, 1.0), (extra, extra_weight), *more)
        for toks, w in groups:
            if w <= 0:
                continue
            for t, c in Counter(toks).items():
                tid = self.index.get(t)
                if tid is None or self.df[tid] <= 0:
                    continue
                out[tid] = out.get(tid, 0.0) + w * c * stats.idf(t)
        return {k: v for k, v in out.items() if v > 0}


# --- writing -----------------------------------------------------------------------------------


def _date_int(date: str | None) -> int:
    try:
        return int(date.replace("-", "")[:8]) if date else 0
    except ValueError:
        return 0


def _create_collection(client, settings, name: str, dim: int, dense_index: str, model_id: str) -> None:
    from pymilvus import DataType

    s = client.create_schema(auto_id=False, enable_dynamic_field=False, description=f"Qiao chunks ({model_id})")
    s.add_field("pk", DataType.INT64, is_primary=True)
    s.add_field("doc_id", DataType.VARCHAR, max_length=128)
    s.add_field("lang", DataType.VARCHAR, max_length=8)
    s.add_field("regions", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=256, max_length=128)
    s.add_field("date", DataType.INT32)
    s.add_field("dense", DataType.FLOAT_VECTOR, dim=int(dim))
    s.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    ip = client.prepare_index_params()
    if dense_index == "HNSW":
        ip.add_index("dense", index_type="HNSW", metric_type="IP", params={"M": settings.hnsw_m, "efConstruction": 80})
    else:
        ip.add_index("dense", index_type="FLAT", metric_type="IP")
    ip.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    client.create_collection(
        name, schema=s, index_params=ip, consistency_level="Strong",
        properties={"qiao.model_id": model_id},
    )


def _all_pks(client, name: str) -> set[int]:
    it = client.query_iterator(name, batch_size=4096, filter="", output_fields=["pk"])
    out: set[int] = set()
    try:
        while True:
            batch = it.next()
            if not batch:
                break
            out.update(int(r["pk"]) for r in batch)
    finally:
        it.close()
    return out


def _previous(root: Path, base_name: str) -> tuple[dict | None, Terms | None]:
    """The current build's Milvus section and vocabulary, when it wrote to a generation of ``base_name``."""
    from qiao.index.store import current_build, read_manifest

    manifest = read_manifest(root)
    build = current_build(root)
    section = (manifest or {}).get("milvus")
    if not isinstance(section, dict) or not str(section.get("collection", "")).startswith(base_name + "_g") or build is None:
        return None, None
    try:
        return section, Terms.load(build / TERMS_FILE)
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def write_rows(
    tmp: Path,
    root: Path,
    chunks: Sequence[Chunk],
    vectors: np.ndarray,
    tokens: Sequence[Sequence[str]],
    settings,
    model_id: str,
    log=lambda s: None,
) -> dict:
    """Make a collection hold every row of this build (the catalog in ``tmp`` is not current yet),
    write the vocabulary to ``tmp/terms.json``; return the manifest's ``milvus`` section.

    Incremental -- only the rows the current build's collection lacks are written into it -- when
    the mean length stayed within the tolerance and the dense index type stays. Otherwise every
    row goes into a new *generation* ``<name>_g<8 hex>``: rewriting the weights in place would
    change the scores under the current catalog (and a failed build would leave them changed).
    Rows of removed chunks and old generations go in :func:`finish_write`, after the switch.
    """
    client = connect(settings)
    base_name = collection_name(settings, root)
    n = len(chunks)
    dim = int(vectors.shape[1]) if vectors.ndim == 2 else 0
    dense_index = "HNSW" if n > settings.hnsw_threshold else "FLAT"
    prev, base = _previous(root, base_name)
    terms = Terms.build(tokens, base)
    incremental = (
        prev is not None
        and base is not None
        and prev.get("dense_index") == dense_index
        and prev.get("dim") == dim
        and abs(terms.avgdl / base.avgdl_ref - 1.0) <= settings.milvus_avgdl_tolerance
        and _call(settings, "list collections", client.has_collection, prev["collection"])
    )
    pks = [pk_of(c.chunk_id) for c in chunks]
    if len(set(pks)) != len(pks):
        raise MilvusError("two chunk ids map to the same Milvus primary key: rebuild with another QIAO_CHUNK_SIZE")
    if incremental:
        assert prev is not None and base is not None
        name = prev["collection"]
        terms.avgdl_ref = base.avgdl_ref
        # a collection is released when its server (or milvus-lite file) is reopened: load it to read it
        _call(settings, "load the collection", client.load_collection, name)
        existing = _call(settings, "list the stored rows", _all_pks, client, name)
    else:
        terms = Terms.build(tokens)  # a new generation: fresh token ids and exact length normalisation
        name = f"{base_name}_g{os.urandom(4).hex()}"
        _call(settings, "create the collection", _create_collection, client, settings, name, dim, dense_index, model_id)
        existing = set()
    todo = [i for i, p in enumerate(pks) if p not in existing]
    log(f"milvus: {name} at {settings.milvus_target}: writing {len(todo)} of {n} rows ({'incremental' if incremental else 'new generation'})")
    _upsert(settings, client, name, chunks, pks, vectors, tokens, terms, todo)
    terms.save(tmp / TERMS_FILE)
    return {
        "collection": name,
        "uri": settings.milvus_target,
        "dense_index": dense_index,
        "dim": dim,
        "avgdl_ref": terms.avgdl_ref,
        "written": len(todo),
        "stale_rows": len(existing - set(pks)),
        "previous": prev["collection"] if prev else None,
    }


def _upsert(settings, client, name: str, chunks, pks, vectors, tokens, terms: "Terms", todo) -> None:
    """Write rows ``todo`` (indexes into the parallel sequences) in batches of WRITE_BATCH."""
    todo = list(todo)
    for s in range(0, len(todo), WRITE_BATCH):
        rows = []
        for i in todo[s : s + WRITE_BATCH]:
            c = chunks[i]
            rows.append({
                "pk": pks[i], "doc_id": c.doc_id, "lang": c.lang, "regions": list(c.regions), "date": _date_int(c.date),
                "dense": np.asarray(vectors[i], np.float32).tolist(), "sparse": terms.doc_vector(tokens[i]),
            })
        _call(settings, "write rows", client.upsert, name, rows)


def finish_write(settings, section: dict, chunks: Sequence[Chunk]) -> int:
    """After the catalog switch: delete the rows the current catalog does not hold, and drop the
    generations no build uses (the previous build's is kept, as ``index.store`` keeps that build:
    a server that loaded it may still be answering). Returns the rows deleted."""
    client = connect(settings)
    name = section["collection"]
    base_name = name.rsplit("_g", 1)[0]
    keep = {name, section.get("previous")}
    for other in _call(settings, "list collections", client.list_collections):
        if other.startswith(base_name + "_g") and other not in keep:
            _call(settings, "drop an old generation", client.drop_collection, other)
    if not section.get("stale_rows"):
        return 0
    keep_pks = {pk_of(c.chunk_id) for c in chunks}
    _call(settings, "load the collection", client.load_collection, name)
    stale = sorted(_call(settings, "list the stored rows", _all_pks, client, name) - keep_pks)
    for s in range(0, len(stale), 4096):
        _call(settings, "delete rows", client.delete, name, ids=stale[s : s + 4096])
    return len(stale)


# --- reading -----------------------------------------------------------------------------------


class FacetMask(np.ndarray):
    """A row mask from :meth:`MilvusIndex.select_rows` that also carries its Milvus expression.

    Any array computed from it (``mask & other``) is a plain mask again (``expr`` None), and then
    the backend filters by primary keys instead."""

    expr: str | None = None

    def __array_finalize__(self, obj) -> None:
        self.expr = None


def _pk(hit) -> int:
    return int(hit["pk"] if "pk" in hit else hit["id"])


def _lit(values: Sequence[str]) -> str:
    return json.dumps([str(v) for v in values], ensure_ascii=False)


@dataclass
class MilvusIndex(LoadedIndex):
    """The Milvus :class:`~qiao.index.backend.SearchBackend`: the catalog (chunks, documents, row
    metadata) in memory as for FAISS, vectors and BM25 weights in the collection."""

    client: Any = None  # pymilvus.MilvusClient (untyped)
    collection: str = ""
    terms: Any = None  # Terms, set by open()
    settings: Any = None  # qiao.settings.Settings
    _pk_rows: dict[int, int] = field(default_factory=dict, repr=False)
    _row_pk: Any = field(default=None, repr=False)  # (n,) int64 primary key of each row
    _vec_cache: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _slack: int = 0  # rows in the collection that this catalog does not know (leftovers, an update in flight)

    @classmethod
    def open(cls, base: LoadedIndex, section: Any, settings, root: Path, verify_rows: bool = True) -> "MilvusIndex":
        if not isinstance(section, dict) or not section.get("collection"):
            raise IndexLoadError(f"index at {base.path} has no Milvus section in its manifest: run `qiao index` to rebuild it")
        base_name = collection_name(settings, root)
        name = str(section["collection"])
        if not name.startswith(base_name + "_g"):
            raise MilvusError(
                f"index at {base.path} was built into Milvus collection {name!r}, these settings use "
                f"{base_name!r}: run `qiao index` to rebuild it"
            )
        client = connect(settings)
        if not _call(settings, "list collections", client.has_collection, name):
            raise MilvusError(f"Milvus collection {name} is missing at {settings.milvus_target}: run `qiao index` to rebuild it")
        try:
            _call(settings, "load the collection", client.load_collection, name)
        except MilvusError:
            pass  # a server may already have it loaded; the count below is the real check
        terms = Terms.load(base.path / TERMS_FILE)
        row_pk = np.array([pk_of(c.chunk_id) for c in base.chunks], dtype=np.int64)
        idx = cls(
            **{f: getattr(base, f) for f in ("path", "manifest", "documents", "chunks", "bm25", "vector_index",
                                               "chunk_lang", "chunk_date", "chunk_doc", "region_rows", "second_index",
                                               "units", "units_error")},
            client=client, collection=name, terms=terms, settings=settings,
        )
        idx._row_pk = row_pk
        idx._pk_rows = {int(p): i for i, p in enumerate(row_pk)}
        if verify_rows:
            res = _call(settings, "count rows", client.query, name, filter="", output_fields=["count(*)"])
            stored = int(res[0]["count(*)"])
            if stored < len(row_pk):
                raise MilvusError(
                    f"Milvus collection {name} holds {stored} rows, the index has {len(row_pk)}: run `qiao index` to rebuild it"
                )
            idx._slack = stored - len(row_pk)
        return idx

    # --- metadata ------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.manifest.get("embedder", {}).get("dim") or 0)

    def select_rows(self, *, lang=None, doc_id=None, region=None, date_from=None, date_to=None):
        mask = super().select_rows(lang=lang, doc_id=doc_id, region=region, date_from=date_from, date_to=date_to)
        if mask is None:
            return None
        parts = []
        if lang:
            parts.append(f"lang in {_lit(lang)}")
        if doc_id:
            parts.append(f"doc_id in {_lit(doc_id)}")
        if region:
            parts.append(f"array_contains_any(regions, {_lit(region)})")
        if date_from or date_to:
            lo = int(date_from.replace("-", "")) if date_from else 0
            hi = int(date_to.replace("-", "")) if date_to else 99999999
            parts.append(f"(date > 0 and date >= {lo} and date <= {hi})")
        out = mask.view(FacetMask)
        out.expr = " and ".join(parts)
        return out

    def _expr(self, lang: str | None, allowed: np.ndarray | None) -> str:
        parts = []
        if lang is not None:
            parts.append(f"lang == {json.dumps(lang)}")
        if allowed is not None:
            expr = getattr(allowed, "expr", None)
            if expr:
                parts.append(expr)
            else:  # an arbitrary mask: the allowed primary keys
                parts.append(f"pk in [{','.join(map(str, self._row_pk[np.flatnonzero(allowed)].tolist()))}]")
        return " and ".join(parts)

    def _rows(self, hits, score_key: str = "distance") -> tuple[np.ndarray, np.ndarray]:
        rows, scores = [], []
        for h in hits:
            r = self._pk_rows.get(_pk(h))
            if r is not None:
                rows.append(r)
                scores.append(h[score_key])
        return np.asarray(rows, np.int64), np.asarray(scores, np.float32)

    def _search(self, what: str, field_: str, data, limit: int, expr: str, params: dict, output=("pk",)):
        limit = int(min(limit + self._slack, MAX_TOPK))
        if limit <= 0:
            return []
        res = _call(
            self.settings, what, self.client.search, self.collection, data=[data], anns_field=field_, limit=limit,
            filter=expr, output_fields=list(output), search_params={"metric_type": "IP", "params": params},
        )
        return res[0]

    # --- dense -----------------------------------------------------------------------------
    def _dense_params(self, k: int) -> dict:
        return {"ef": max(k, self.settings.hnsw_ef_search)} if self.manifest["milvus"].get("dense_index") == "HNSW" else {}

    def dense_search(self, query_vector, k, *, lang=None, allowed=None):
        """Top ``k`` rows by cosine. Only primary keys come back: returning the vectors too cost
        two thirds of a milvus-lite search (building 384 floats per hit into the reply), and the
        retriever needs the vectors of a few rows only (:meth:`vectors`)."""
        if self.size == 0 or k <= 0 or (allowed is not None and not allowed.any()):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        k = int(min(k, self.size))
        hits = self._search(
            "search vectors", "dense", np.asarray(query_vector, np.float32).tolist(), k, self._expr(lang, allowed),
            self._dense_params(k),
        )
        rows, scores = self._rows(hits)
        return rows[:k], scores[:k]

    def vectors(self, rows):
        rows = np.asarray(rows, np.int64)
        if rows.size == 0:
            return np.zeros((0, self.dim), np.float32)
        cache = self._vec_cache
        got: dict[int, np.ndarray] = {}
        for r in rows.tolist():
            v = cache.get(r)
            if v is not None:
                got[r] = v
        missing = sorted({r for r in rows.tolist() if r not in got})
        if len(cache) + len(missing) > 50_000:
            cache.clear()
        for s in range(0, len(missing), 4096):
            pks = ",".join(str(int(self._row_pk[r])) for r in missing[s : s + 4096])
            res = _call(self.settings, "read vectors", self.client.query, self.collection, filter=f"pk in [{pks}]", output_fields=["pk", "dense"])
            for g in res:
                r = self._pk_rows.get(int(g["pk"]))
                if r is not None:
                    got[r] = cache[r] = np.asarray(g["dense"], np.float32)
        try:
            return np.stack([got[r] for r in rows.tolist()]).astype(np.float32)
        except KeyError as exc:
            raise MilvusError(f"Milvus collection {self.collection} lacks the vector of row {exc}: run `qiao index` to rebuild it") from None

    def cosines_of(self, rows: np.ndarray, query_vector: np.ndarray) -> np.ndarray:
        """Cosines ``(m,)`` of the given rows with the query: a dense search restricted to their
        primary keys, only keys and distances returned (reading the vectors back costs 384 floats
        per row in the reply). A row an approximate (HNSW) search skipped is read back and scored here."""
        rows = np.asarray(rows, np.int64)
        if rows.size == 0:
            return np.zeros(0, np.float32)
        qv = np.asarray(query_vector, np.float32)
        pks = ",".join(str(int(p)) for p in self._row_pk[rows])
        hits = self._search("score rows", "dense", qv.tolist(), rows.size, f"pk in [{pks}]", self._dense_params(rows.size))
        got = dict(zip(*(a.tolist() for a in self._rows(hits))))
        missing = [r for r in rows.tolist() if r not in got]
        if missing:
            got.update(zip(missing, (self.vectors(np.asarray(missing, np.int64)) @ qv).tolist()))
        return np.array([got[r] for r in rows.tolist()], np.float32)

    # --- lexical ---------------------------------------------------------------------------
    def lexical_search(
        self, tokens: Sequence[str], extra: Sequence[str] = (), extra_weight: float = 0.0, k: int = 100,
        allowed: np.ndarray | None = None, more: Sequence[tuple[Sequence[str], float]] = (),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows by BM25 (> 0), best first, ties by row; the facet filter runs in Milvus.
        ``more``: further weighted token groups scored in the same search (:meth:`Terms.query_vector`)."""
        q = self.terms.query_vector(tokens, extra, extra_weight, more)
        if not q or self.size == 0 or (allowed is not None and not allowed.any()):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        hits = self._search("search BM25 weights", "sparse", q, k, self._expr(None, allowed), {"drop_ratio_search": 0.0})
        rows, scores = self._rows(hits)
        keep = scores > 0
        rows, scores = rows[keep], scores[keep]
        order = np.lexsort((rows, -scores))[:k]
        return rows[order], scores[order]

    def lexical_scores_of(
        self, rows: np.ndarray, tokens: Sequence[str], extra: Sequence[str] = (), extra_weight: float = 0.0,
        more: Sequence[tuple[Sequence[str], float]] = (),
    ) -> np.ndarray:
        """BM25 scores of the given rows ``(m,)`` (0 where no token matches): a sparse search
        restricted to their primary keys (the stored weights stay in Milvus; only scores come back)."""
        rows = np.asarray(rows, np.int64)
        out = np.zeros(rows.size, np.float32)
        q = self.terms.query_vector(tokens, extra, extra_weight, more)
        if not q or rows.size == 0:
            return out
        pks = ",".join(str(int(p)) for p in self._row_pk[rows])
        hits = self._search("score rows by BM25", "sparse", q, rows.size, f"pk in [{pks}]", {"drop_ratio_search": 0.0})
        got = dict(zip(*(a.tolist() for a in self._rows(hits))))
        return np.array([got.get(int(r), 0.0) for r in rows], np.float32)

    def lexical_scores(self, tokens, extra=(), extra_weight=0.0):
        """The protocol's full score array (exact up to 16,384 matching rows: Milvus' largest ``limit``)."""
        out = np.zeros(self.size, np.float32)
        rows, scores = self.lexical_search(tokens, extra, extra_weight, k=min(self.size, MAX_TOPK))
        out[rows] = scores
        return out

    def term_stats(self) -> TermStats:
        return self.terms.stats()

    # --- updates in memory (the protocol's add / delete) --------------------------------------
    #
    # They change the collection and this object; the catalog on disk is index.store's business
    # (a build). Document weights keep ``avgdl_ref``; df, n and the mean length follow the rows.

    def add_chunks(self, chunks, vectors, tokens, documents=()):
        self.second_index = None  # its rows would no longer match: the second signal is off until a rebuild
        if len(chunks) != len(vectors) or len(chunks) != len(tokens):
            raise ValueError(f"{len(chunks)} chunks, {len(vectors)} vectors and {len(tokens)} token lists: they must match")
        if not len(chunks):
            return
        terms = self.terms.extended(tokens, +1)
        pks = [pk_of(c.chunk_id) for c in chunks]
        _upsert(self.settings, self.client, self.collection, chunks, pks, np.asarray(vectors, np.float32), tokens, terms, range(len(chunks)))
        self.terms = terms
        self._reset_rows([*self.chunks, *chunks])
        for d in documents:
            self.documents[d.doc_id] = d

    def delete_documents(self, doc_ids):
        self.second_index = None  # its rows would no longer match: the second signal is off until a rebuild
        from qiao.index.analysers import tokenize_many
        from qiao.index.store import bm25_text

        ids = set(doc_ids)
        for d in ids:
            self.documents.pop(d, None)
        gone = [c for c in self.chunks if c.doc_id in ids]
        if not gone:
            return 0
        pks = [pk_of(c.chunk_id) for c in gone]
        for s in range(0, len(pks), 4096):
            _call(self.settings, "delete rows", self.client.delete, self.collection, ids=pks[s : s + 4096])
        self.terms = self.terms.extended(tokenize_many([bm25_text(c) for c in gone]), -1)
        self._reset_rows([c for c in self.chunks if c.doc_id not in ids])
        return len(gone)

    def _reset_rows(self, chunks) -> None:
        from qiao.index.store import _row_metadata

        self.chunks = list(chunks)
        self.chunk_lang, self.chunk_date, self.chunk_doc, self.region_rows = _row_metadata(self.chunks)
        self._lang_masks.clear()
        self._row_pk = np.array([pk_of(c.chunk_id) for c in self.chunks], dtype=np.int64)
        self._pk_rows = {int(p): i for i, p in enumerate(self._row_pk)}
        self._vec_cache = {}
