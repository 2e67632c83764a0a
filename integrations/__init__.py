"""Integrations above the service layer: the LangChain retriever (:mod:`qiao.integrations.langchain`)
and the MCP server (:mod:`qiao.integrations.mcp_server`).

Each integration imports its third-party framework (langchain-core, mcp) only when its own module is
imported, so ``import qiao`` stays light for a user who needs neither.
"""
