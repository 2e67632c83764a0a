"""LangChain's own conformance suites (``langchain-tests``) on QiaoRetriever.

* ``RetrieversIntegrationTests`` on the local backend (the seed index in this process) and on the URL
  backend (the live test server on a loopback port): constructor ``k``, per-call ``k``
  (``invoke(q, k=1)``), ``invoke`` and ``ainvoke`` return Documents.
* ``ToolsIntegrationTests`` on ``retriever.as_tool()``: name, input schema, invoke / ainvoke with and
  without a ``ToolCall``.

The suites build the retriever from ``retriever_constructor(**retriever_constructor_params)``; the
params need the session's service or server, which an autouse fixture binds to the test instance
before the suite's own ``retriever`` / ``tool`` fixture runs (pytest runs autouse fixtures first).
"""

from __future__ import annotations

import pytest
from langchain_core.tools import BaseTool
from langchain_tests.integration_tests import RetrieversIntegrationTests, ToolsIntegrationTests
from langchain_tests.unit_tests import ToolsUnitTests

from qiao import QiaoRetriever

QUERY = "which regions allow stem cell clinical trials"


class TestLocalRetrieverStandard(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _bind(self, seed_service):
        self._service = seed_service

    @property
    def retriever_constructor(self) -> type[QiaoRetriever]:
        return QiaoRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"backend": self._service}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


class TestUrlRetrieverStandard(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _bind(self, seed_server):
        self._url = seed_server.url

    @property
    def retriever_constructor(self) -> type[QiaoRetriever]:
        return QiaoRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"base_url": self._url}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


class _AsTool:
    @pytest.fixture(autouse=True)
    def _bind(self, seed_service):
        self._service = seed_service

    @property
    def tool_constructor(self) -> BaseTool:
        retriever = QiaoRetriever.from_service(self._service, k=3)
        return retriever.as_tool(name="qiao_search", description="Search Chinese cell and gene therapy policy documents.")

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"query": QUERY, "k": 2, "region": ["Beijing"]}


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")  # as_tool is beta upstream
class TestRetrieverAsToolStandard(_AsTool, ToolsIntegrationTests):
    """Invoke / ainvoke, with and without a ToolCall."""


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
class TestRetrieverAsToolUnitStandard(_AsTool, ToolsUnitTests):
    """Name, input schema, example arguments valid for the schema."""
