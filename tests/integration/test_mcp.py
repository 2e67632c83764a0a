"""The MCP server driven by the official client (``mcp.ClientSession``) over both transports:
streamable HTTP at ``/mcp`` of the live test server, and stdio (``python -m qiao.api.cli mcp``)."""

from __future__ import annotations

import os
import sys
from contextlib import asynccontextmanager

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from qiao.settings import PROJECT_ROOT

QUESTION = "什么时候天津通过了基因和细胞产业促进条例?"


@asynccontextmanager
async def http_session(url: str):
    async with streamable_http_client(url + "/mcp") as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def stdio_session(data_dir):
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "qiao.api.cli", "--data-dir", str(data_dir), "mcp"],
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(PROJECT_ROOT)},
        cwd=str(PROJECT_ROOT),
    )
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


def check_citations(citations, documents):
    assert citations
    for c in citations:
        assert set(c) >= {"id", "doc_id", "source", "title", "start", "end", "quote", "date", "regions"}
        assert c["quote"] == documents[c["doc_id"]].text[c["start"] : c["end"]]


async def exercise(session, service):
    """What an MCP client does: list, search, ask, read a document; bad arguments are tool errors."""
    documents = service.snapshot.index.documents
    tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) == {"search", "ask"}
    assert set(tools["search"].input_schema["properties"]) == {"query", "k", "mode", "filters"}
    assert set(tools["ask"].input_schema["properties"]) == {"question", "k", "filters"}
    assert tools["ask"].annotations.read_only_hint is True and tools["ask"].output_schema

    # search: [n] passages with their sources; structured citations with exact quotes
    res = await session.call_tool("search", {"query": "Tianjin gene and cell industry promotion regulations", "k": 3})
    assert not res.is_error
    cites = res.structured_content["citations"]
    assert [c["id"] for c in cites] == [1, 2, 3] and cites[0]["source"].startswith("001")
    check_citations(cites, documents)
    text = res.content[0].text
    assert text.startswith("[1] ") and "[3] " in text and cites[0]["source"] in text
    # the same ranking as the service's own retriever
    hits = service.snapshot.retriever.search("Tianjin gene and cell industry promotion regulations", k=3)
    assert [(c["doc_id"], c["start"], c["end"]) for c in cites] == [(h.chunk.doc_id, h.chunk.start, h.chunk.end) for h in hits]

    # filters
    res = await session.call_tool("search", {"query": "干细胞", "k": 5, "mode": "bm25", "filters": {"region": ["北京"], "lang": ["zh"]}})
    assert not res.is_error and res.structured_content["mode"] == "bm25"
    assert all("Beijing" in c["regions"] and c["lang"] == "zh" for c in res.structured_content["citations"])

    # ask: a cited answer
    res = await session.call_tool("ask", {"question": QUESTION})
    assert not res.is_error
    out = res.structured_content
    assert out["answerable"] is True and "2023" in out["answer"] and "[1]" in out["answer"]
    check_citations(out["citations"], documents)
    text = res.content[0].text
    assert text.startswith(out["answer"]) and "\nSources:\n[1] " in text

    # the document resource, whole and as a span
    c = out["citations"][0]
    uri = f"qiao://documents/{c['doc_id']}"
    whole = await session.read_resource(uri)
    assert whole.contents[0].text == documents[c["doc_id"]].text
    span = await session.read_resource(f"{uri}?start={c['start']}&end={c['end']}")
    assert span.contents[0].text == c["quote"]
    listed = {str(r.uri) for r in (await session.list_resources()).resources}
    assert {f"qiao://documents/{d}" for d in documents} <= listed
    with pytest.raises(MCPError, match="unknown doc_id"):
        await session.read_resource("qiao://documents/nope")
    with pytest.raises(MCPError, match="out of range"):
        await session.read_resource(f"{uri}?start=5&end=999999999")

    # bad arguments: tool errors that say what to fix, and the server keeps serving
    bad = [
        ("search", {"query": "stem cell", "k": 0}, "k"),
        ("search", {"query": "stem cell", "k": 1000}, "k"),
        ("search", {"query": "   "}, "query must not be empty"),
        ("search", {"query": "x" * 5000}, "limit is"),
        ("search", {"query": "stem cell", "mode": "fuzzy"}, "mode"),
        ("search", {"query": "stem cell", "filters": {"region": ["Atlantis"]}}, "Atlantis"),
        ("search", {"query": "stem cell", "filters": {"date_from": "yesterday"}}, "YYYY-MM-DD"),
        ("search", {"query": "stem cell", "filters": {"colour": "red"}}, "colour"),
        ("search", {"query": "stem cell", "filters": {"doc_id": ["nope"]}}, "unknown doc_id 'nope'"),
        ("search", {}, "query"),
        ("ask", {"question": 42}, "question"),
        ("ask", {"question": "stem cell", "filters": {"date_from": "2024-01-01", "date_to": "2023-01-01"}}, "after"),
    ]
    for tool, args, needle in bad:
        res = await session.call_tool(tool, args)
        assert res.is_error, (tool, args)
        assert needle in res.content[0].text, (needle, res.content[0].text)
    res = await session.call_tool("search", {"query": "stem cell", "k": 1})
    assert not res.is_error and len(res.structured_content["citations"]) == 1
    return out


async def test_mcp_over_streamable_http(seed_server, seed_service):
    async with http_session(seed_server.url) as session:
        info = session._initialize_result.server_info if hasattr(session, "_initialize_result") else None
        assert info is None or info.name == "qiao"
        await exercise(session, seed_service)


async def test_mcp_over_stdio(seed_service):
    async with stdio_session(seed_service.settings.data_dir) as session:
        await exercise(session, seed_service)


def test_mcp_cli_without_index_is_one_line(tmp_path):
    import subprocess

    r = subprocess.run(
        [sys.executable, "-m", "qiao.api.cli", "--data-dir", str(tmp_path), "mcp"],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120, stdin=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert r.returncode == 2 and r.stderr.startswith("qiao: error:") and "Traceback" not in r.stderr and r.stdout == ""
