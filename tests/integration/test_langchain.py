"""QiaoRetriever (LangChain) over the local seed index and over a real server; the cited-chain example."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import os
import subprocess
import sys
import threading

import pytest
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableLambda
from pydantic import ValidationError

from qiao.integrations.langchain import QiaoRetriever, QiaoSearchError, format_documents
from qiao.settings import PROJECT_ROOT
from support import free_port

META_KEYS = {"doc_id", "chunk_id", "source", "title", "start", "end", "date", "regions", "lang", "score", "bm25_score", "vector_score", "rank"}
EXAMPLE = PROJECT_ROOT / "examples" / "cited_chain.py"


@pytest.fixture(scope="module")
def server_url(seed_server):
    return seed_server.url


@pytest.fixture(scope="module")
def local(seed_service) -> QiaoRetriever:
    return QiaoRetriever.from_service(seed_service, k=4)


def test_local_documents_carry_citable_metadata(local, seed_service):
    docs = local.invoke("Tianjin gene and cell industry promotion regulations")
    assert len(docs) == 4 and all(isinstance(d, Document) for d in docs)
    originals = seed_service.snapshot.index.documents
    for rank, d in enumerate(docs, 1):
        m = d.metadata
        assert META_KEYS <= set(m)
        assert m["rank"] == rank and d.id == m["chunk_id"] and m["chunk_id"].startswith(m["doc_id"])
        assert isinstance(m["regions"], list) and m["lang"] in ("en", "zh")
        span = originals[m["doc_id"]].text[m["start"] : m["end"]]
        assert d.page_content.split()[0] in span  # offsets point into the original file
        assert m["source"] == originals[m["doc_id"]].source
    top = docs[0].metadata
    assert top["source"].startswith("001") and top["date"] == "2023-07-27"
    # same ranking as the hybrid retriever underneath
    hits = seed_service.snapshot.retriever.search("Tianjin gene and cell industry promotion regulations", k=4)
    assert [d.metadata["chunk_id"] for d in docs] == [h.chunk.chunk_id for h in hits]


def test_filters_are_fields_and_are_validated(local):
    zh = local.with_filters(lang=["zh"]).invoke("stem cell clinical research")
    assert zh and all(d.metadata["lang"] == "zh" for d in zh)

    tianjin = local.with_filters(region=["天津"], k=10).invoke("cell therapy")
    assert tianjin and all("Tianjin" in d.metadata["regions"] for d in tianjin)

    dated = local.with_filters(date_from="2023-01-01", date_to="2023-12-31", k=10).invoke("stem cell")
    assert dated and all(d.metadata["date"] and "2023-01-01" <= d.metadata["date"] <= "2023-12-31" for d in dated)

    only = local.with_filters(doc_id=[zh[0].metadata["doc_id"]], k=10).invoke("policy")
    assert only and {d.metadata["doc_id"] for d in only} == {zh[0].metadata["doc_id"]}

    with pytest.raises(ValidationError, match="Atlantis"):
        local.with_filters(region=["Atlantis"])
    with pytest.raises(ValidationError, match="YYYY-MM-DD"):
        local.with_filters(date_from="yesterday")
    with pytest.raises(ValidationError, match="after"):
        local.with_filters(date_from="2024-01-01", date_to="2023-01-01")
    with pytest.raises(ValidationError):
        local.with_filters(k=0)
    with pytest.raises(QiaoSearchError, match="nope"):
        local.with_filters(doc_id=["nope"]).invoke("policy")
    with pytest.raises(ValidationError, match="exactly one"):
        QiaoRetriever(k=3)


def test_lcel_chain_batch_and_async(local):
    chain = local | RunnableLambda(format_documents)
    text = chain.invoke("哪些地区支持干细胞临床研究")
    assert text.startswith("[1] ") and "\n    (" in text and ".txt, chars " in text
    assert "[4] " in text and "[5] " not in text
    both = chain.batch(["stem cell", "gene therapy"])
    assert len(both) == 2 and all(t.startswith("[1] ") for t in both)
    adocs = asyncio.run(local.ainvoke("stem cell"))
    assert [d.id for d in adocs] == [d.id for d in local.invoke("stem cell")]


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")  # as_tool is beta upstream
def test_as_tool_for_agents(local):
    tool = local.as_tool(name="qiao_search", description="Search Chinese cell and gene therapy policy documents.")
    assert tool.name == "qiao_search" and tool.args
    docs = tool.invoke("Boao Lecheng new biomedical technology regulations")
    assert docs and isinstance(docs[0], Document)
    arg = next(iter(tool.args))
    msg = tool.invoke({"name": "qiao_search", "args": {arg: "Boao Lecheng"}, "id": "call_1", "type": "tool_call"})
    assert isinstance(msg, ToolMessage) and msg.tool_call_id == "call_1" and ".txt" in str(msg.content)
    # a text tool: passages with their citations
    text_tool = (local | RunnableLambda(format_documents)).as_tool(name="qiao_cited", description="cited passages")
    out = text_tool.invoke("Boao Lecheng")
    assert out.startswith("[1] ") and "000_" in out


def test_remote_retriever_matches_local(server_url, local):
    remote = QiaoRetriever.from_url(server_url + "/", k=4)
    assert remote.base_url == server_url
    q = "Tianjin gene and cell industry promotion regulations"
    r_docs, l_docs = remote.invoke(q), local.invoke(q)
    assert [d.id for d in r_docs] == [d.id for d in l_docs]
    assert r_docs[0].metadata == l_docs[0].metadata and r_docs[0].page_content == l_docs[0].page_content
    zh = remote.with_filters(region=["北京"], lang=["zh"]).invoke("干细胞")
    assert zh and all(d.metadata["lang"] == "zh" and "Beijing" in d.metadata["regions"] for d in zh)
    assert [d.id for d in asyncio.run(remote.ainvoke(q))] == [d.id for d in r_docs]


def test_remote_errors_are_one_line(server_url):
    remote = QiaoRetriever.from_url(server_url)
    with pytest.raises(QiaoSearchError, match="422.*query"):
        remote.invoke("   ")
    with pytest.raises(QiaoSearchError, match="404.*nope"):
        remote.with_filters(doc_id=["nope"]).invoke("stem cell")
    dead = QiaoRetriever.from_url(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(QiaoSearchError, match="cannot reach"):
        dead.invoke("stem cell")


def _load_example():
    spec = importlib.util.spec_from_file_location("cited_chain", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_chain_formats_passages_with_citations(local, seed_service):
    ex = _load_example()
    out = ex.build_chain(local).invoke("Which regions support stem cell clinical research?")
    assert out.startswith("Question: Which regions support stem cell clinical research?")
    docs = local.invoke("Which regions support stem cell clinical research?")
    for n, d in enumerate(docs, 1):
        assert f"[{n}] " in out and d.metadata["source"] in out and f"chars {d.metadata['start']}–{d.metadata['end']}" in out

    fake = FakeListChatModel(responses=["Beijing supports stem cell clinical research [1]."])
    answered = ex.build_chain(local, llm=fake).invoke("Which regions support stem cell clinical research?")
    head, sources = answered.split("\n\nSources:\n")
    assert head == "Beijing supports stem cell clinical research [1]."
    assert sources.splitlines()[0].startswith("[1] ") and docs[0].metadata["source"] in sources


def test_example_runs_as_a_script_offline(seed_service):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = [sys.executable, str(EXAMPLE), "天津 基因和细胞产业", "--k", "2", "--data-dir", str(seed_service.settings.data_dir)]
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Question: 天津 基因和细胞产业") and "[2] " in r.stdout and "[3] " not in r.stdout
    bad = subprocess.run(args + ["--region", "Atlantis"], capture_output=True, text=True, env=env, timeout=300, cwd="/")
    assert bad.returncode == 2 and "Atlantis" in bad.stderr and "Traceback" not in bad.stderr


# --- per-call arguments (issue 16) ------------------------------------------------------------------


def test_per_call_arguments_override_for_that_call_only(local, seed_service):
    q = "stem cell clinical research"
    assert len(local.invoke(q, k=1)) == 1 and len(local.invoke(q, k=7)) == 7
    assert len(local.invoke(q)) == 4 and local.k == 4  # the instance is unchanged
    bm25 = local.invoke(q, mode="bm25", k=5)
    assert [d.id for d in bm25] == [h.chunk.chunk_id for h in seed_service.snapshot.retriever.search(q, k=5, mode="bm25")]
    beijing = local.invoke(q, region=["北京"], lang=["zh"], k=6)
    assert beijing and all("Beijing" in d.metadata["regions"] and d.metadata["lang"] == "zh" for d in beijing)
    dated = local.invoke(q, date_from="2023-01-01", k=10)
    assert dated and all(d.metadata["date"] and d.metadata["date"] >= "2023-01-01" for d in dated)
    one_doc = beijing[0].metadata["doc_id"]
    assert {d.metadata["doc_id"] for d in local.invoke(q, doc_id=[one_doc], k=10)} == {one_doc}
    # batch passes the same arguments to every input
    assert [len(docs) for docs in local.batch(["stem cell", "gene therapy"], k=2)] == [2, 2]
    # async, both overrides at once
    adocs = asyncio.run(local.ainvoke(q, k=2, mode="vector"))
    assert [d.id for d in adocs] == [h.chunk.chunk_id for h in seed_service.snapshot.retriever.search(q, k=2, mode="vector")]


def test_per_call_arguments_are_validated(local, server_url):
    remote = QiaoRetriever.from_url(server_url, k=4)
    for r in (local, remote):
        with pytest.raises(ValidationError, match="Atlantis"):
            r.invoke("stem cell", region=["Atlantis"])
        with pytest.raises(ValidationError, match="k"):
            r.invoke("stem cell", k=0)
        with pytest.raises(ValidationError, match="mode"):
            r.invoke("stem cell", mode="fuzzy")
        with pytest.raises(ValidationError, match="YYYY-MM-DD"):
            r.invoke("stem cell", date_to="soon")
        with pytest.raises(ValidationError, match="after"):
            r.invoke("stem cell", date_from="2024-01-01", date_to="2023-01-01")
        with pytest.raises(TypeError, match="top_k.*per-call arguments are k, mode"):
            r.invoke("stem cell", top_k=3)
        with pytest.raises(ValidationError, match="Atlantis"):
            asyncio.run(r.ainvoke("stem cell", region=["Atlantis"]))
    assert local.region is None and remote.region is None


def test_remote_per_call_arguments(server_url, local):
    remote = QiaoRetriever.from_url(server_url, k=4)
    q = "Tianjin gene and cell industry promotion regulations"
    assert [d.id for d in remote.invoke(q, k=2)] == [d.id for d in local.invoke(q, k=2)]
    zh = asyncio.run(remote.ainvoke("干细胞", k=2, region=["Beijing"], lang=["zh"]))
    assert len(zh) == 2 and all(d.metadata["lang"] == "zh" and "Beijing" in d.metadata["regions"] for d in zh)
    assert [len(x) for x in remote.batch([q, "stem cell"], k=1)] == [1, 1]


class _NoThreads(concurrent.futures.ThreadPoolExecutor):
    def submit(self, *a, **kw):  # any use of the loop's executor fails the test
        raise AssertionError("ainvoke used a worker thread")


def test_async_url_backend_runs_on_the_loop_and_local_off_it(server_url, local, seed_service):
    remote = QiaoRetriever.from_url(server_url, k=2)
    queries = ["stem cell", "gene therapy", "天津 细胞治疗", "Boao Lecheng"]

    async def remote_many():
        asyncio.get_running_loop().set_default_executor(_NoThreads())
        return await asyncio.gather(*(remote.ainvoke(q) for q in queries))

    results = asyncio.run(remote_many())
    assert [len(r) for r in results] == [2, 2, 2, 2]

    loop_thread, seen = None, []
    inner = seed_service.snapshot.retriever

    class Recording:
        index = inner.index

        def search(self, *a, **kw):
            seen.append(threading.get_ident())
            return inner.search(*a, **kw)

    async def local_one():
        nonlocal loop_thread
        loop_thread = threading.get_ident()
        return await QiaoRetriever(backend=Recording(), k=2).ainvoke("stem cell")

    assert len(asyncio.run(local_one())) == 2
    assert seen and loop_thread not in seen  # the CPU-bound local search ran in a worker thread


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
def test_as_tool_takes_per_call_arguments(local):
    tool = local.as_tool()
    assert tool.name == "qiao_search" and set(tool.args) == {"query", "k", "mode", "lang", "region", "date_from", "date_to", "doc_id"}
    docs = tool.invoke({"query": "干细胞", "k": 2, "region": ["北京"]})
    assert len(docs) == 2 and all("Beijing" in d.metadata["regions"] for d in docs)
    assert len(tool.invoke("stem cell")) == 4  # a bare string is the query; instance k
    assert len(asyncio.run(tool.ainvoke({"query": "stem cell", "k": 1}))) == 1
    with pytest.raises(ValidationError):
        tool.invoke({"query": "stem cell", "k": 500})


def test_import_qiao_is_lazy_about_langchain():
    code = (
        "import sys, qiao; assert not [m for m in sys.modules if m.startswith('langchain')], 'langchain imported';"
        "from qiao import QiaoRetriever; import qiao.integrations.langchain as m; assert QiaoRetriever is m.QiaoRetriever;"
        "assert 'langchain_core' in sys.modules; print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
