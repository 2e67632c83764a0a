"""Graceful shutdown (issue 17): SIGTERM during a long upload finishes or rolls back the update within a
bound and the process exits; the index on disk still loads and serves, never half-written.

The real ``python -m qiao.api.cli serve`` in a child process with its own data dir (a copy of the seed
index), a real upload whose build embeds a few hundred new passages, then SIGTERM while it embeds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from qiao.service.core import QiaoService, collect_documents
from qiao.settings import PROJECT_ROOT, Settings
from support import copy_seed_data, free_port

SHUTDOWN_BOUND_S = 10.0  # QIAO_SHUTDOWN_TIMEOUT_S
SLACK_S = 5.0  # process start-up of the signal path and interpreter exit on a loaded 2-core box


def big_document(n: int = 300) -> bytes:
    rows = [
        f"Article {i}. Guangxi clinic {i * 13} may run cord blood bank trial {i * 7} after the review "
        f"board number {i * 31} approves protocol {i * 17}." for i in range(n)
    ]
    return ("Guangxi notice on cord blood banks\n\n" + "\n\n".join(rows)).encode()


@pytest.fixture()
def data_dir(seed_service, tmp_path, shared_cache_dir) -> Path:
    return copy_seed_data(seed_service, tmp_path, shared_cache_dir)


def start_server(data: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "QIAO_DATA_DIR": str(data), "QIAO_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_BOUND_S),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qiao.api.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).json()["index_loaded"]:
                return proc, url
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"server did not start: {proc.stderr.read()[-2000:]!r}")
        time.sleep(0.2)


def test_sigterm_during_a_long_upload_rolls_back_and_exits(data_dir):
    before = {d.doc_id for d in collect_documents(Settings(data_dir=data_dir)).documents}
    proc, url = start_server(data_dir)
    result: dict = {}

    def upload():
        try:
            r = httpx.post(url + "/documents", files={"files": ("guangxi.txt", big_document(), "text/plain")},
                           headers={"X-Qiao-Request": "1"}, timeout=600)
            result["status"], result["body"] = r.status_code, r.text
        except httpx.HTTPError as exc:
            result["error"] = repr(exc)

    t = threading.Thread(target=upload)
    try:
        t.start()
        staged = data_dir / "documents" / ".pending.json"
        deadline = time.time() + 60
        while not staged.exists():  # the update is staged: its build is embedding now
            assert time.time() < deadline and proc.poll() is None, "the upload never reached its build"
            time.sleep(0.05)
        time.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(SHUTDOWN_BOUND_S + SLACK_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server was still running {SHUTDOWN_BOUND_S + SLACK_S} s after SIGTERM")
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        t.join(30)
    assert took <= SHUTDOWN_BOUND_S + SLACK_S
    # the upload was answered: rolled back (503, saying why), or finished just in time (201)
    if "status" in result:
        assert result["status"] in (201, 503), result
        if result["status"] == 503:
            assert "shutting down" in json.loads(result["body"])["detail"]
    # the index on disk loads (checksums verified) and serves exactly what the store holds
    service = QiaoService(Settings(data_dir=data_dir))
    assert service.try_load() is not None, service.load_error
    served = set(service.snapshot.index.documents)
    stored = {d.doc_id for d in collect_documents(service.settings).documents}
    assert served == stored
    assert served == before or (served > before and len(served - before) == 1)
    assert not (data_dir / "documents" / ".pending.json").exists()
    hits = service.snapshot.retriever.search("stem cell clinical research", k=3, mode="hybrid")
    assert hits and hits[0].chunk.doc_id in served
