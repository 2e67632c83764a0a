"""Typed config slices (qiao/config.py): built from Settings, no defaults of their own elsewhere."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from qiao import config
from qiao.corpus.chunking import chunk_document
from qiao.index import analysers
from qiao.retriever.fusion import calibrated_fusion, calibrated_vector
from qiao.settings import Settings


def test_slices_mirror_settings_and_are_frozen(monkeypatch):
    monkeypatch.setenv("QIAO_FUSION_BM25_WEIGHT", "3.5")
    monkeypatch.setenv("QIAO_CHUNK_SIZE", "500")
    monkeypatch.setenv("QIAO_HNSW_EF_SEARCH", "64")
    s = Settings()
    r = config.RetrievalConfig.of(s)
    assert r.fusion.bm25_weight == 3.5 and r.fusion.method == s.fusion and r.candidate_depth == s.candidate_depth
    i = config.IndexConfig.of(s)
    assert i.chunk == config.ChunkConfig(500, s.chunk_overlap) and i.hnsw_ef_search == 64
    q = config.QAConfig.of(s)
    assert q.min_evidence == s.qa_min_evidence and not q.llm.enabled
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.candidate_depth = 1  # type: ignore[misc]


def test_no_component_default_can_disagree_with_settings():
    for fn in (calibrated_fusion, calibrated_vector, chunk_document):
        defaults = {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}
        assert not defaults, (fn.__name__, defaults)
    for cls in (config.ChunkConfig, config.FusionConfig, config.RetrievalConfig, config.QAConfig, config.IndexConfig):
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(cls)), cls


def test_analyser_options_come_from_settings(monkeypatch, tmp_path):
    from qiao.service.core import QiaoService

    before = analysers.current_config()
    fp = analysers.analyser_fingerprint()
    assert before == config.AnalyserConfig.of(Settings())  # the defaults are the Settings defaults
    monkeypatch.setenv("QIAO_ANALYSER_CHINESE_MODE", "precise")
    try:
        QiaoService(Settings(data_dir=tmp_path))
        assert analysers.current_config().chinese_mode == "precise"
        assert analysers.analyser_fingerprint() != fp  # an index built before is stale
        # precise mode: no sub-words of the compound
        assert "细胞" not in analysers.tokenize("间充质干细胞")
    finally:
        analysers.configure(before)
    assert "细胞" in analysers.tokenize("间充质干细胞") and analysers.analyser_fingerprint() == fp
