"""Ingest through Ray (QIAO_RAY_ADDRESS=local): the in-process vectors, resumable through the cache."""

from __future__ import annotations

import numpy as np
import pytest

from qiao.index import ray_ingest
from qiao.service.core import QiaoService, collect_documents
from qiao.settings import Settings


@pytest.fixture()
def ray_local():
    yield
    ray_ingest.shutdown()  # Ray is heavy: never leave a local cluster running


def test_ray_ingest_gives_the_in_process_vectors_and_resumes(tmp_path, seed_service, ray_local):
    settings = Settings(data_dir=tmp_path / "data", ray_address="local", ray_workers=2, embed_batch_size=8, backend="milvus")
    service = QiaoService(settings)  # its own, empty embedding cache: every passage goes to the workers
    docs = collect_documents(settings).documents[:2]
    report = service.build(docs, progress=False)
    assert report.chunks > 8 and report.embedded == report.chunks  # several batches, all embedded remotely
    index = service.snapshot.index
    seed = seed_service.snapshot.index
    row_of = {c.chunk_id: i for i, c in enumerate(seed.chunks)}
    ours = index.vectors(np.arange(index.size))
    theirs = seed.vectors(np.array([row_of[c.chunk_id] for c in index.chunks]))
    assert np.einsum("ij,ij->i", ours, theirs).min() > 0.9999  # the same vectors as in process, in row order
    if settings.second_embedder != "none":  # the second embedder's vectors too (embedded in the driver meanwhile)
        assert index.manifest.get("second_embedder") and index.second_index is not None
        rows = np.array([row_of[c.chunk_id] for c in index.chunks])
        both2 = np.einsum("ij,ij->i", index.second_vectors(np.arange(index.size)), seed.second_vectors(rows))
        assert both2.min() > 0.9999
    again = service.build(docs, progress=False)
    assert again.embedded == 0  # resumable: everything finished is in the content-hash cache
    hits = service.snapshot.retriever.search("stem cell", k=3)
    assert hits and all(h.chunk.doc_id in {d.doc_id for d in docs} for h in hits)


def test_unreachable_ray_cluster_is_one_line(tmp_path, ray_local):
    settings = Settings(data_dir=tmp_path / "data", ray_address="ray://127.0.0.1:1")
    service = QiaoService(settings)
    with pytest.raises(ray_ingest.RayIngestError, match="QIAO_RAY_ADDRESS") as err:
        service.build(collect_documents(settings).documents[:1], progress=False)
    assert "\n" not in str(err.value)
