"""The SearchBackend interface as FAISS + bm25s implement it (qiao.index.store.LoadedIndex)."""

from __future__ import annotations

import math

import numpy as np

from qiao.index.analysers import tokenize, tokenize_many
from qiao.index.backend import SearchBackend
from qiao.index.store import bm25_text, load_index


def _fresh_copy(service):
    """A private in-memory copy of the seed index (the session snapshot must stay untouched)."""
    emb = service.embedder
    return load_index(service.settings.index_dir, expect_model_id=emb.model_id, expect_dim=emb.dim, verify=False)


def test_loaded_index_is_a_search_backend(seed_service):
    index = seed_service.snapshot.index
    assert isinstance(index, SearchBackend)
    assert index.languages == ["en", "zh"]
    assert index.dim == seed_service.embedder.dim


def test_term_stats_agree_with_the_lexical_index(seed_service):
    index = seed_service.snapshot.index
    stats = index.term_stats()
    token = tokenize("Tianjin")[0]
    holding = sum(token in set(tokenize(bm25_text(c))) for c in index.chunks)
    assert holding > 0 and stats.df(token) == holding
    n = index.size
    assert math.isclose(stats.idf(token), math.log(1 + (n - holding + 0.5) / (holding + 0.5)))
    assert stats.df("zzqqxx-never-seen") == 0
    # a row holds the token iff its lexical score for it is positive
    assert int((index.lexical_scores([token]) > 0).sum()) == holding
    # full match of one token: idf / (1 + k1)
    assert math.isclose(stats.full_match_mass([token, token]), stats.idf(token) / (1 + stats.k1), rel_tol=1e-6)


def test_dense_search_per_language_and_allowed_rows(seed_service):
    index = seed_service.snapshot.index
    qv = seed_service.embedder.embed_queries(["cell therapy regulation in Tianjin"])[0]
    rows, scores = index.dense_search(qv, 5, lang="zh")
    assert rows.size == 5 and set(index.chunk_lang[rows]) == {"zh"}
    assert np.all(np.diff(scores) <= 1e-6)
    # the scores are the inner products with the stored vectors of those rows
    assert np.allclose(index.vectors(rows) @ qv, scores, atol=1e-5)
    doc = index.chunks[int(rows[0])].doc_id
    allowed = index.select_rows(doc_id=[doc])
    assert allowed is not None and index.select_rows() is None
    rows2, _ = index.dense_search(qv, 50, allowed=allowed)
    assert rows2.size == int(allowed.sum()) and set(index.chunk_doc[rows2]) == {doc}
    nothing = np.zeros(index.size, dtype=bool)
    assert index.dense_search(qv, 5, allowed=nothing)[0].size == 0


def test_delete_then_add_back_restores_the_results(seed_service):
    index = _fresh_copy(seed_service)
    qv = seed_service.embedder.embed_queries(["Hainan Boao Lecheng pilot zone"])[0]
    tokens = tokenize("Hainan Boao Lecheng pilot zone")
    before_rows, before_scores = index.dense_search(qv, 8)
    before_lex = index.lexical_scores(tokens)
    victim = index.chunks[int(before_rows[0])].doc_id
    doc = index.documents[victim]
    rows = np.flatnonzero(index.chunk_doc == victim)
    chunks = [index.chunks[r] for r in rows]
    vecs = index.vectors(rows)
    n = index.size

    removed = index.delete_documents([victim])
    assert removed == len(rows) and index.size == n - removed == index.vector_index.size
    assert victim not in index.documents and victim not in set(index.chunk_doc)
    got, _ = index.dense_search(qv, 8)
    assert victim not in {index.chunks[int(r)].doc_id for r in got}
    assert index.lexical_scores(tokens).shape == (n - removed,)

    index.add_chunks(chunks, vecs, tokenize_many([bm25_text(c) for c in chunks]), [doc])
    assert index.size == n and victim in index.documents
    after_rows, after_scores = index.dense_search(qv, 8)
    ids = lambda rs: [index.chunks[int(r)].chunk_id for r in rs]  # noqa: E731
    assert after_scores.tolist() == before_scores.tolist()
    # same chunks, same BM25 scores (rows renumbered: compare by chunk id)
    assert sorted(ids(after_rows)) == sorted(seed_service.snapshot.index.chunks[int(r)].chunk_id for r in before_rows)
    after_lex = index.lexical_scores(tokens)
    by_id_before = {seed_service.snapshot.index.chunks[i].chunk_id: s for i, s in enumerate(before_lex)}
    assert all(math.isclose(by_id_before[c.chunk_id], float(s), rel_tol=1e-5) for c, s in zip(index.chunks, after_lex))
