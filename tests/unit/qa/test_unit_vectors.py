"""Unit vectors stored with the index: /ask embeds no unit, add/remove keep them aligned, damage is detected."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from qiao.corpus.loader import load_documents
from qiao.index.store import chunk_documents, current_build, load_index
from qiao.qa.pipeline import AnswerEngine
from qiao.qa.sentences import DocumentUnits
from qiao.qa.units import unit_texts
from qiao.retriever.hybrid import HybridRetriever
from qiao.service.core import QiaoService
from tests.conftest import SEED_DIR, _share_cache

QUESTIONS = [
    "which regions allow stem cell clinical trials",
    "什么时候天津通过了基因和细胞产业促进条例?",
    "哪些地区支持干细胞临床研究",
    "What does Hainan Boao Lecheng allow for cell therapy?",
]


@pytest.fixture(scope="module")
def seed_service(backend_seed_service):
    """Runs on each search backend (FAISS + bm25s, Milvus): the unit vectors are files beside either."""
    return backend_seed_service


class PassageCounter:
    """Wraps a CachedEmbedder's ``embed_passages`` and records every text it is asked for."""

    def __init__(self, emb):
        self.texts: list[str] = []
        inner = emb.embed_passages

        def counted(texts, *a, **kw):
            self.texts.extend(texts)
            return inner(texts, *a, **kw)

        emb.embed_passages = counted


def reopen(settings, cache_dir) -> tuple[QiaoService, PassageCounter, PassageCounter]:
    """A new service over the same data directory (new embedders, index read from disk: what a fresh
    process sees), with counters on the primary and the second embedder's passages."""
    s = QiaoService(settings)
    _share_cache(s, cache_dir)
    s.load()
    return s, PassageCounter(s.embedder), PassageCounter(s.embedder.second)


def assert_exact(answer, docs):
    assert answer.citations
    for c in answer.citations:
        assert c.quote == docs[c.doc_id].text[c.start : c.end]


def test_unit_texts_are_the_texts_qa_embeds():
    docs = load_documents(SEED_DIR).documents
    chunks = chunk_documents(docs, 350, 60)
    units = {d.doc_id: DocumentUnits.of(d) for d in docs}
    expected = [s.embed_text for row, c in enumerate(chunks) for s in units[c.doc_id].in_chunk(c, row)]
    assert unit_texts(docs, chunks) == expected and len(expected) > 100


def test_fresh_process_embeds_no_unit(seed_service, shared_cache_dir):
    build = current_build(seed_service.settings.index_dir)
    manifest = json.loads((build / "manifest.json").read_text())
    assert set(manifest["units"]["kinds"]) == {"primary", "second"}  # every embedder in use
    service, primary, second = reopen(seed_service.settings, shared_cache_dir)
    index = service.snapshot.index
    assert index.units is not None and index.units_error is None
    engine = AnswerEngine(index, service.snapshot.retriever, service.settings)
    for q in QUESTIONS:
        assert_exact(engine.ask(q, k=8), index.documents)
    assert primary.texts == [] and second.texts == []  # no unit went to an embedder
    assert engine.unit_stats["embedded"] == 0 and engine.unit_stats["stored"] > 50

    # both kinds through the small API, aligned to the sentences, equal to what the embedders give
    ev = engine.gather(QUESTIONS[0], k=8)
    sentences = [x.sentence for x in ev.pool][:12]
    for which, emb in (("primary", service.embedder), ("second", service.embedder.second)):
        stored = engine._vectors(sentences, which)
        assert stored.dtype == np.float32 and stored.shape == (len(sentences), emb.dim)
        fresh = emb.inner.embed_passages([s.embed_text for s in sentences])  # the model itself, no cache
        q = engine.query_vector(QUESTIONS[0], which)
        assert np.max(np.abs(stored @ q - fresh @ q)) < 2e-3  # float16 storage (index/units.py) plus engine noise
    assert primary.texts == [] and second.texts == []


def test_add_and_remove_keep_unit_vectors_aligned(fresh_service, shared_cache_dir):
    service = fresh_service()
    from qiao.service.core import collect_documents

    service.build(collect_documents(service.settings).documents, progress=False)
    base = json.loads((current_build(service.settings.index_dir) / "manifest.json").read_text())["units"]
    text = ("# Zorblat notice\n\nThe Zorblat Institute of Regenerative Medicine approved the first quantum gene therapy trial "
            "on 3 March 2024.\n\nThe trial enrols forty patients with inherited retinal disease in Tianjin.\n")
    report = service.add_documents([("zorblat.md", text.encode())])
    doc_id = report.documents[0]["doc_id"]
    assert 0 < report.build.units_embedded["primary"] <= 6  # only the new document's units were embedded
    assert report.build.units_embedded.get("second", 0) <= 6
    added = json.loads((current_build(service.settings.index_dir) / "manifest.json").read_text())
    assert added["units"]["count"] > base["count"] and added["second_embedder"] is not None

    fresh, primary, _ = reopen(service.settings, shared_cache_dir)
    index = fresh.snapshot.index
    engine = AnswerEngine(index, fresh.snapshot.retriever, fresh.settings)
    answer = engine.ask("When did the Zorblat Institute approve the quantum gene therapy trial?", k=8)
    assert_exact(answer, index.documents)
    assert answer.citations[0].doc_id == doc_id and "Zorblat" in answer.citations[0].quote
    assert primary.texts == [] and engine.unit_stats["embedded"] == 0

    service.remove_document(doc_id)
    removed = json.loads((current_build(service.settings.index_dir) / "manifest.json").read_text())["units"]
    assert removed["count"] == base["count"]
    fresh, primary, _ = reopen(service.settings, shared_cache_dir)
    index = fresh.snapshot.index
    engine = AnswerEngine(index, fresh.snapshot.retriever, fresh.settings)
    for q in ["When did the Zorblat Institute approve the quantum gene therapy trial?", QUESTIONS[1]]:
        answer = engine.ask(q, k=8)
        assert all(c.doc_id != doc_id for c in answer.citations)
        for c in answer.citations:
            assert c.quote == index.documents[c.doc_id].text[c.start : c.end]
    assert primary.texts == [] and engine.unit_stats["embedded"] == 0


def _copy_current(service, root):
    src = current_build(service.settings.index_dir)
    (root / "builds").mkdir(parents=True)
    shutil.copytree(src, root / "builds" / src.name)
    os.symlink(os.path.join("builds", src.name), root / "current")
    return root / "builds" / src.name


def test_damaged_or_foreign_unit_vectors_are_never_used(seed_service_of, tmp_path):
    from qiao.index.store import stale_reason

    seed_service = seed_service_of("faiss")  # copies of the index directory (a Milvus collection is bound to its own)
    settings = seed_service.settings
    build = _copy_current(seed_service, tmp_path / "a")
    p = build / "units" / "primary.npy"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10  # same size, one vector changed
    p.write_bytes(bytes(data))
    index = load_index(tmp_path / "a", settings=settings)
    assert index.units is None and "checksum" in index.units_error  # detected; the index still serves
    docs = list(index.documents.values())
    assert "unit vectors are damaged" in stale_reason(tmp_path / "a", docs, settings, unit_kinds={"primary": "x"})
    engine = AnswerEngine(index, HybridRetriever(index, seed_service.embedder, settings), settings)
    assert_exact(engine.ask(QUESTIONS[0], k=8), index.documents)
    assert engine.unit_stats["stored"] == 0 and engine.unit_stats["embedded"] > 0  # computed lazily instead

    # stored by another model (a manifest that says so): not used, and the index is stale for this embedder
    build = _copy_current(seed_service, tmp_path / "b")
    m = json.loads((build / "manifest.json").read_text())
    for kind in m["units"]["kinds"].values():  # every embedder's (QA scoring uses the second one's too)
        kind["model_id"] = kind["model_id"] + "/some-other-model"
    (build / "manifest.json").write_text(json.dumps(m))
    index = load_index(tmp_path / "b", settings=settings)
    assert index.units is not None
    engine = AnswerEngine(index, HybridRetriever(index, seed_service.embedder, settings), settings)
    engine.ask(QUESTIONS[0], k=8)
    assert engine.unit_stats["stored"] == 0 and engine.unit_stats["embedded"] > 0
    kinds = {"primary": seed_service.embedder.model_id, "second": seed_service.embedder.second.model_id}
    assert "other embedders" in stale_reason(tmp_path / "b", docs, settings, seed_service.embedder.model_id, kinds)
