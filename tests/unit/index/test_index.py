"""Index persistence: the manifest check, atomic builds, corruption detection, the embedding cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from qiao.service.core import collect_documents
from qiao.index.embedders import CachedEmbedder, EmbeddingCache
from qiao.index.store import IndexLoadError, current_build, load_index


def test_index_on_disk_matches_corpus(seed_service):
    snap = seed_service.snapshot
    m = snap.index.manifest
    assert m["documents"] == 5
    assert m["chunks"] == snap.index.size == snap.index.vector_index.size
    assert (snap.index.path / "vectors.faiss").stat().st_size > 0
    # every stored chunk points at its exact source span
    for c in snap.index.chunks:
        doc = snap.index.documents[c.doc_id]
        assert 0 <= c.start < c.end <= len(doc.text)


def test_manifest_rejects_other_embedder(seed_service):
    root = seed_service.settings.index_dir
    with pytest.raises(IndexLoadError, match="qiao index"):
        load_index(root, expect_model_id="st/some-other-model", expect_dim=384)
    with pytest.raises(IndexLoadError, match="384|dim|-d"):
        load_index(root, expect_model_id=seed_service.embedder.model_id, expect_dim=768)


def test_failed_build_leaves_previous_index_loadable(fresh_service, monkeypatch):
    from support import inject_build_failure

    service = fresh_service()
    docs = collect_documents(service.settings).documents
    first = service.build(docs[:2], progress=False)
    for stage in ("embed", "write"):
        inject_build_failure(monkeypatch, service, stage)
        with pytest.raises(RuntimeError, match="injected"):
            service.build(docs, progress=False)
        monkeypatch.undo()
        loaded = load_index(service.settings.index_dir)
        assert loaded.manifest["build_id"] == first.build_id
        assert loaded.manifest["documents"] == 2
    # the next build cleans the half-written directory away
    service.build(docs, progress=False)
    builds = service.settings.index_dir / "builds"
    assert not [p for p in builds.iterdir() if p.name.startswith(".tmp-")]
    assert load_index(service.settings.index_dir).manifest["documents"] == len(docs)


def _copy_current(service, tmp_path):
    import shutil

    src = current_build(service.settings.index_dir)
    root = tmp_path / "copy"
    (root / "builds").mkdir(parents=True)
    shutil.copytree(src, root / "builds" / src.name)
    os.symlink(os.path.join("builds", src.name), root / "current")
    return root, root / "builds" / src.name


def test_corrupt_files_are_detected(seed_service, tmp_path):
    root, build = _copy_current(seed_service, tmp_path / "a")
    with open(build / "vectors.faiss", "r+b") as f:
        f.truncate(100)
    with pytest.raises(IndexLoadError, match="truncated|bytes"):
        load_index(root)

    root, build = _copy_current(seed_service, tmp_path / "b")
    data = bytearray((build / "chunks.jsonl").read_bytes())
    data[10] ^= 0x01  # same size, different content
    (build / "chunks.jsonl").write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match="checksum"):
        load_index(root)

    root, build = _copy_current(seed_service, tmp_path / "c")
    m = json.loads((build / "manifest.json").read_text())
    m["schema_version"] = 999
    (build / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexLoadError, match="schema"):
        load_index(root)

    root, build = _copy_current(seed_service, tmp_path / "d")
    for p in (build / "bm25").iterdir():
        p.unlink()
    with pytest.raises(IndexLoadError, match="missing"):
        load_index(root)


def test_no_index_is_a_clear_error(tmp_path):
    with pytest.raises(IndexLoadError, match="qiao index"):
        load_index(tmp_path / "nothing")


class CountingEmbedder:
    model_id = "test/counting"
    dim = 4

    def __init__(self):
        self.calls = 0

    def embed_passages(self, texts):
        self.calls += len(texts)
        v = np.array([[len(t), 1.0, t.count("a"), 2.0] for t in texts], np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    embed_queries = embed_passages


def test_embedding_cache_never_reembeds(tmp_path):
    inner = CountingEmbedder()
    cache = EmbeddingCache(tmp_path / "e.sqlite")
    emb = CachedEmbedder(inner, cache)
    a = emb.embed_passages(["alpha", "beta", "alpha"])
    assert inner.calls == 2  # duplicates embedded once
    # a new process (new wrapper, same file) finds them on disk
    emb2 = CachedEmbedder(inner, EmbeddingCache(tmp_path / "e.sqlite"))
    b = emb2.embed_passages(["beta", "alpha", "gamma"])
    assert inner.calls == 3 and emb2.last_embedded == 1
    np.testing.assert_allclose(a[1], b[0])
    np.testing.assert_allclose(a[0], b[1])


def test_rebuild_uses_cache(fresh_service):
    service = fresh_service()
    docs = collect_documents(service.settings).documents
    service.build(docs, progress=False)
    again = service.build(docs, progress=False)
    assert again.embedded == 0
    assert service.stale_reason(docs) is None
    assert service.stale_reason(docs[:3]) == "documents changed"
