"""The Milvus search backend on embedded milvus-lite: the same numbers as FAISS + bm25s, only the
changed rows written, crash-safe updates, and one-line errors for bad configuration."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from qiao.index.analysers import tokenize
from qiao.index.backend import SearchBackend
from qiao.index.glossary import expand_query
from qiao.index.milvus_backend import MilvusError, MilvusIndex, collection_name, connect
from qiao.index import store
from qiao.index.store import IndexLoadError, bm25_text, build_index, current_build, load_index, read_manifest
from qiao.retriever.models import Filters
from qiao.service.core import QiaoService, collect_documents
from qiao.settings import Settings

QUERIES = [
    "which regions allow stem cell clinical trials",
    "天津 细胞治疗 先行先试",
    "Shenzhen regulations cell gene industry",
    "海南博鳌乐城 干细胞",
]


@pytest.fixture(scope="module")
def both(seed_service_of):
    return seed_service_of("faiss"), seed_service_of("milvus")


def _rows_in_collection(index: MilvusIndex) -> int:
    return int(index.client.query(index.collection, filter="", output_fields=["count(*)"])[0]["count(*)"])


def test_milvus_index_is_a_search_backend_with_the_same_statistics(both):
    f, m = both[0].snapshot.index, both[1].snapshot.index
    assert isinstance(m, MilvusIndex) and isinstance(m, SearchBackend)
    assert (m.size, m.dim, m.languages) == (f.size, f.dim, f.languages)
    assert [c.chunk_id for c in m.chunks] == [c.chunk_id for c in f.chunks]
    fs, ms = f.term_stats(), m.term_stats()
    assert ms.n == fs.n
    for c in f.chunks:
        for t in set(tokenize(bm25_text(c))):
            assert ms.df(t) == fs.df(t), t
    assert ms.df("zzqqxx-never-seen") == 0
    for q in QUERIES:
        tokens, bridge = tokenize(q), expand_query(q)
        assert ms.full_match_mass(tokens) == pytest.approx(fs.full_match_mass(tokens))
        a, b = f.lexical_scores(tokens, bridge, 0.5), m.lexical_scores(tokens, bridge, 0.5)
        assert (a > 0).sum() > 0 and np.allclose(a, b, atol=1e-4), q  # BM25 from Milvus sparse vectors = bm25s
        rows, scores = m.lexical_search(tokens, bridge, 0.5, k=10)
        assert np.allclose(scores, a[rows], atol=1e-4) and scores[0] == pytest.approx(a.max(), abs=1e-4)
        extra = np.array([3, 7, 11])
        assert np.allclose(m.lexical_scores_of(extra, tokens, bridge, 0.5), a[extra], atol=1e-4)


def test_dense_search_filters_and_vectors_match_faiss(both):
    service_f, service_m = both
    f, m = service_f.snapshot.index, service_m.snapshot.index
    qv = service_f.embedder.embed_queries(["cell therapy regulation in Tianjin"])[0]
    for lang in (None, "en", "zh"):
        rf, sf = f.dense_search(qv, 10, lang=lang)
        rm, sm = m.dense_search(qv, 10, lang=lang)
        assert rf.tolist() == rm.tolist() and np.allclose(sf, sm, atol=1e-5)
    for facets in ({"region": ["Tianjin"]}, {"lang": ["zh"], "date_from": "2021-01-01"}, {"doc_id": [f.chunks[0].doc_id]}):
        mask = m.select_rows(**facets)
        assert mask.expr and np.array_equal(mask, f.select_rows(**facets))  # the same rows, as a Milvus expression
        rf, _ = f.dense_search(qv, 20, allowed=f.select_rows(**facets))
        rm, _ = m.dense_search(qv, 20, allowed=mask)
        assert rf.tolist() == rm.tolist() and mask[rm].all()
        plain = np.asarray(mask).copy()  # a mask without an expression: filtered by primary keys
        assert m.dense_search(qv, 20, allowed=plain)[0].tolist() == rm.tolist()
    rows = np.array([5, 0, 40])
    assert np.allclose(m.vectors(rows), f.vectors(rows), atol=1e-6)


@pytest.mark.parametrize("mode", ["bm25", "vector", "hybrid"])
def test_search_gives_the_same_hits_on_both_backends(both, mode):
    for q in QUERIES:
        for filters in (None, Filters(lang=("zh",)), Filters(region=("Tianjin",))):
            hf = both[0].snapshot.retriever.search(q, k=10, mode=mode, filters=filters)
            hm = both[1].snapshot.retriever.search(q, k=10, mode=mode, filters=filters)
            assert [h.chunk.chunk_id for h in hf] == [h.chunk.chunk_id for h in hm], (q, filters)
            assert np.allclose([h.score for h in hf], [h.score for h in hm], atol=1e-3)
            assert [h.bm25_rank for h in hf] == [h.bm25_rank for h in hm]


NOTE = (
    "# Cell therapy pilot notice\n\nThe Hainan Boao Lecheng pilot zone allows imported stem cell products "
    "under real-world data studies. Hospitals in the zone report every treated patient to the provincial "
    "health commission within thirty days, and the commission publishes a quarterly summary of outcomes.\n"
)


def test_add_and_remove_write_only_the_changed_rows(fresh_service):
    service = fresh_service(backend="milvus")
    docs = collect_documents(service.settings).documents
    service.build(docs, progress=False)
    first = read_manifest(service.settings.index_dir)["milvus"]
    assert first["written"] == service.snapshot.index.size and first["stale_rows"] == 0

    report = service.add_documents([("pilot-note.md", NOTE.encode())])
    index = service.snapshot.index
    added = report.documents[0]
    section = read_manifest(service.settings.index_dir)["milvus"]
    if section["collection"] == first["collection"]:
        assert section["written"] == added["chunks"] > 0  # only the new document's rows
    else:  # the mean chunk length drifted past the tolerance: a new generation with exact weights
        assert section["written"] == index.size and section["previous"] == first["collection"]
    assert _rows_in_collection(index) == index.size
    hits = service.snapshot.retriever.search("Boao Lecheng imported stem cell real-world data", k=3)
    assert hits[0].chunk.doc_id == added["doc_id"]

    service.remove_document(added["doc_id"])
    index = service.snapshot.index
    assert _rows_in_collection(index) == index.size == len(
        [c for c in index.chunks if c.doc_id != added["doc_id"]]
    )
    assert all(h.chunk.doc_id != added["doc_id"] for h in service.snapshot.retriever.search("Boao Lecheng", k=10))


def test_an_update_after_a_restart_reads_the_released_collection(fresh_service):
    """A new process (or a restarted Milvus) finds the collection released: an incremental build
    must load it before listing its rows (found by `make bench`: `qiao index` twice on one file)."""
    service = fresh_service(backend="milvus", milvus_avgdl_tolerance=1.0)  # always incremental
    docs = collect_documents(service.settings).documents
    service.build(docs[:3], progress=False)
    index = service.snapshot.index
    index.client.release_collection(index.collection)  # what reopening the milvus-lite file leaves
    report = service.build(docs, progress=False)  # incremental: the new documents' rows only
    section = read_manifest(service.settings.index_dir)["milvus"]
    assert report.chunks == service.snapshot.index.size == _rows_in_collection(service.snapshot.index)
    assert section["collection"] == index.collection and section["written"] < report.chunks


def _boom(path):
    raise RuntimeError(f"injected failure while checksumming {path}")


@pytest.mark.parametrize("tolerance", [1.0, 0.0], ids=["incremental", "new-generation"])
def test_a_failed_build_leaves_the_current_index_searchable(fresh_service, tolerance, monkeypatch):
    """A build that dies after writing Milvus but before the catalog switch: the current index
    answers exactly as before; the next build reuses (incremental) or drops (generation) its rows."""
    service = fresh_service(backend="milvus", milvus_avgdl_tolerance=tolerance)
    docs = collect_documents(service.settings).documents
    service.build(docs[:3], progress=False)
    first = read_manifest(service.settings.index_dir)["milvus"]["collection"]
    before = [h.chunk.chunk_id for h in service.snapshot.retriever.search("stem cell clinical research", k=10)]
    size = service.snapshot.index.size
    with monkeypatch.context() as m, pytest.raises(RuntimeError, match="injected"):
        m.setattr(store, "sha256_file", _boom)  # dies while checksumming the new catalog, before the switch
        build_index(docs, service.embedder, service.settings.index_dir, service.settings, progress=False)
    service.load()
    index = service.snapshot.index
    assert index.collection == first and index.size == size
    generations = [c for c in index.client.list_collections() if c.startswith(first.rsplit("_g", 1)[0])]
    if tolerance:  # the new rows went into the current collection, unknown to its catalog
        assert _rows_in_collection(index) > size and len(generations) == 1
    else:  # they went into a new generation no catalog uses
        assert _rows_in_collection(index) == size and len(generations) == 2
    assert [h.chunk.chunk_id for h in service.snapshot.retriever.search("stem cell clinical research", k=10)] == before

    service.build(docs, progress=False)
    section = read_manifest(service.settings.index_dir)["milvus"]
    if tolerance:
        assert section["collection"] == first and section["written"] == 0  # written before the failure
    else:
        assert section["collection"] not in generations  # the failed build's generation is dropped
    service.build(docs[:3], progress=False)  # removed rows / old generations go after the switch
    index = service.snapshot.index
    assert index.size == size and _rows_in_collection(index) == size
    assert len([c for c in index.client.list_collections() if c.startswith(first.rsplit("_g", 1)[0])]) <= 2


def test_unreachable_server_is_one_line_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    from support import free_port

    settings = Settings(data_dir=tmp_path / "data", backend="milvus", milvus_uri=f"http://127.0.0.1:{free_port()}", milvus_timeout=2)
    service = QiaoService(settings)
    with pytest.raises(MilvusError) as err:
        service.build(collect_documents(settings).documents, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "QIAO_MILVUS_URI" in msg and "cannot reach Milvus" in msg
    assert current_build(settings.index_dir) is None  # nothing half-written

    from qiao.api import cli

    monkeypatch.setenv("QIAO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QIAO_BACKEND", "milvus")
    monkeypatch.setenv("QIAO_MILVUS_URI", settings.milvus_uri)
    monkeypatch.setenv("QIAO_MILVUS_TIMEOUT", "2")
    from qiao.settings import get_settings

    get_settings.cache_clear()
    try:
        code = cli.main(["index"])
    finally:
        get_settings.cache_clear()
    err_out = capsys.readouterr().err.strip()
    assert code != 0 and "QIAO_MILVUS_URI" in err_out and "Traceback" not in err_out


def test_milvus_lite_file_held_by_another_process(tmp_path):
    db = tmp_path / "held.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pymilvus import MilvusClient
            MilvusClient({str(db)!r}).list_collections()
            print("ready", flush=True)
            time.sleep(120)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        settings = Settings(data_dir=tmp_path / "data", backend="milvus", milvus_uri=str(db))
        with pytest.raises(MilvusError, match="open in another process.*QIAO_MILVUS_URI"):
            connect(settings)
    finally:
        holder.kill()
        holder.wait()


def test_an_index_built_with_other_settings_is_never_read(both, tmp_path):
    service = both[1]
    s = service.settings
    other = s.model_copy(update={"chunk_size": s.chunk_size + 50})
    assert collection_name(other, s.index_dir) != collection_name(s, s.index_dir)
    with pytest.raises(MilvusError, match=r"built into Milvus collection .* run `qiao index`"):
        load_index(s.index_dir, settings=other, verify=False)
    with pytest.raises(IndexLoadError, match="QIAO_BACKEND"):
        load_index(s.index_dir, settings=s.model_copy(update={"backend": "faiss"}), verify=False)
    with pytest.raises(IndexLoadError, match="QIAO_BACKEND"):
        load_index(both[0].settings.index_dir, settings=both[0].settings.model_copy(update={"backend": "milvus"}), verify=False)
    # a collection dropped behind the index's back: say so, don't search an empty one
    name = service.snapshot.index.collection
    client = service.snapshot.index.client
    client.rename_collection(name, name + "_away")
    try:
        with pytest.raises(MilvusError, match="missing .* run `qiao index`"):
            load_index(s.index_dir, settings=s, verify=False)
    finally:
        client.rename_collection(name + "_away", name)
        client.load_collection(name)
