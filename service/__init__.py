"""The service layer: the live index snapshot, document store, update transactions, recovery and
question handling that is not HTTP. HTTP routes, the CLI, the LangChain retriever, the
OpenAI-compatible endpoint and the MCP server all call it; it imports nothing above itself."""
