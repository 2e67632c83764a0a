"""FastAPI app, CLI and web page."""
