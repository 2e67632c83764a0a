"""`qiao serve --workers N` (QIAO_SERVER_WORKERS): N server processes on one port over one index directory.

The real CLI in a child process over a copy of the seed index: two worker processes answer searches, a document
added through one process is found through the port afterwards whichever process answers (they pick up index
switches from each other), and SIGTERM stops the supervisor and its workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from qiao.settings import PROJECT_ROOT
from support import copy_seed_data, free_port


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and "spawn_main" in (d / "cmdline").read_text(errors="replace"):
            out.append(int(d.name))
    return out


@pytest.fixture()
def data_dir(seed_service, tmp_path, shared_cache_dir) -> Path:
    return copy_seed_data(seed_service, tmp_path, shared_cache_dir)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="counts worker processes in /proc")
def test_two_server_processes_share_the_index(data_dir):
    port = free_port()
    env = {**os.environ, "QIAO_DATA_DIR": str(data_dir), "QIAO_SHUTDOWN_TIMEOUT_S": "10", "QIAO_REQUEST_TIMEOUT_S": "120",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qiao.api.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(url + "/health", timeout=5).json().get("index_loaded"):
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read()[-2000:] if proc.stderr else ""
            assert time.time() < deadline, "server did not start"
            time.sleep(0.5)
        assert len(_children(proc.pid)) == 2
        with httpx.Client(timeout=120) as client:
            for i in range(8):  # the kernel spreads connections over both processes
                r = client.post(url + "/search", json={"query": f"天津 细胞治疗 {i}", "k": 3}, headers={"connection": "close"})
                assert r.status_code == 200 and r.json()["hits"], r.text
            text = "Zanzibar quokka hatchery notice\n\nThe Zanzibar quokka hatchery opens its cell therapy wing in 2031."
            r = client.post(url + "/documents", files={"files": ("quokka.txt", text.encode(), "text/plain")},
                            headers={"X-Qiao-Request": "1"})
            assert r.status_code == 201, r.text
            for _ in range(6):  # whichever process answers, it serves the new index
                r = client.post(url + "/search", json={"query": "Zanzibar quokka hatchery", "k": 1, "mode": "bm25"},
                                headers={"connection": "close"})
                assert r.status_code == 200 and r.json()["hits"][0]["source"] == "quokka.txt", r.text
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        time.sleep(0.5)
        assert not [p for p in workers if Path(f"/proc/{p}").exists() and "spawn_main" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_workers_must_be_positive(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qiao.api.cli", "--data-dir", str(tmp_path), "serve", "--workers", "0"],
                       cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "--workers" in r.stderr and "Traceback" not in r.stderr
