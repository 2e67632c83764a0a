"""Test helpers shared by several test modules: a free loopback port and a live uvicorn server."""

from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager
import time

import uvicorn

from qiao.api.app import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving ``create_app(service.settings, service)`` in a thread on 127.0.0.1 (a context manager)."""

    def __init__(self, service):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(service.settings, service)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def inject_build_failure(monkeypatch, service, step: str) -> None:
    """Make every index build of ``service`` fail at ``step`` ("embed": after the passages were
    embedded; "write": after the vectors and BM25 files were written, before the manifest), with
    a RuntimeError saying "injected". ``monkeypatch.undo()`` removes the fault."""
    from qiao.index import store

    if step == "embed":
        embed = service.embedder.embed_passages

        def failing_embed(*a, **kw):
            embed(*a, **kw)
            raise RuntimeError("injected failure after embedding")

        monkeypatch.setattr(service.embedder, "embed_passages", failing_embed)
    elif step == "write":
        save = store.BM25Index.save

        def failing_save(self, directory):
            save(self, directory)
            raise RuntimeError("injected failure while writing")

        monkeypatch.setattr(store.BM25Index, "save", failing_save)
    else:  # pragma: no cover - a typo in a test
        raise ValueError(step)


@contextmanager
def chromium_browser(chromium: str, args: list[str]):
    """Debian's chromium driven by Playwright (skips without playwright; fails, saying how to install it,
    without the browser), closed on exit. One launcher for every browser test."""
    import pytest

    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the 'test' extra)")
    if not (os.path.isfile(chromium) and os.access(chromium, os.X_OK)):
        pytest.fail(f"chromium not found at {chromium}: run `make chromium` (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=args, headless=True)
        try:
            yield b
        finally:
            b.close()


def copy_seed_data(seed_service, tmp_path, shared_cache_dir):
    """A private copy of the seed service's data directory (index and documents) under ``tmp_path``, with
    the suite's shared embedding cache, for tests that run their own server processes over it."""
    import shutil
    from pathlib import Path

    data = Path(tmp_path) / "data"
    shutil.copytree(seed_service.settings.data_dir, data, symlinks=True)
    (data / "cache").mkdir(exist_ok=True)
    src = shared_cache_dir / "embeddings.sqlite"
    if src.exists():
        shutil.copy(src, data / "cache" / "embeddings.sqlite")
    return data


def upload_through_page(pg, url: str, path):
    """Open the web page at ``url``, upload the file ``path`` with its document-management form, and return
    the ``POST /documents`` response (Playwright's); the caller asserts on it and on the page."""
    from urllib.parse import urlparse

    pg.goto(url + "/")
    pg.wait_for_selector("body[data-ready='1']")
    pg.click("#manage summary")
    pg.wait_for_selector("#doc-rows tr")
    before = pg.locator("#doc-rows tr").count()
    pg.set_input_files("#upload-files", str(path))
    with pg.expect_response(lambda r: urlparse(r.url).path == "/documents" and r.request.method == "POST") as info:
        pg.click("#upload-form button[type=submit]")
    return info.value, before

