"""The web page in a real browser: Playwright (Python) driving Debian's chromium, headless,
against the real server on a loopback port.

Chromium is never downloaded: ``make test`` apt-installs Debian's ``chromium`` when missing.
Set QIAO_SKIP_BROWSER=1 to skip these tests on a machine without it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from support import LiveServer, chromium_browser, upload_through_page

CHROMIUM = os.environ.get("QIAO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ANSWERABLE = "When was the second batch of the cell and gene therapy technology transformation catalog announced?"
UNANSWERABLE = "What is the boiling point of liquid nitrogen on Mars?"
STATIC_DIR = Path(__file__).resolve().parents[2] / "api" / "static"

if os.environ.get("QIAO_SKIP_BROWSER") == "1":
    pytest.skip("QIAO_SKIP_BROWSER=1", allow_module_level=True)


@pytest.fixture(scope="module")
def server(seed_service):
    with LiveServer(seed_service) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    with chromium_browser(CHROMIUM, CHROMIUM_ARGS) as b:
        yield b


@pytest.fixture()
def page(browser, server):
    """A fresh page; any request that does not go to the test server is blocked and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US", service_workers="block")
    foreign: list[str] = []
    console_errors: list[str] = []

    def guard(route):
        host = urlparse(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host == "127.0.0.1":
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    pg = context.new_page()
    pg.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: console_errors.append(f"pageerror: {e}"))
    pg.set_default_timeout(30_000)
    pg.goto(server.url + "/")
    pg.wait_for_selector("body[data-ready='1']")
    yield pg
    context.close()
    assert not foreign, f"the page tried to reach other hosts: {foreign}"
    assert not [e for e in console_errors if "pageerror" in e], console_errors


def _ask(page, question: str):
    """Type a question, press Enter, return the /ask JSON once the page has rendered it."""
    page.fill("#q", question)
    with page.expect_response(lambda r: urlparse(r.url).path == "/ask") as resp_info:
        page.press("#q", "Enter")
    resp = resp_info.value
    assert resp.status == 200, resp.text()
    page.wait_for_selector("#status", state="hidden")
    return resp.json()


# --- without a browser ---------------------------------------------------------------


def test_page_and_assets_are_self_contained(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    for name in ("app.js", "style.css"):
        a = httpx.get(f"{server.url}/static/{name}")
        assert a.status_code == 200 and len(a.text) > 500
    assert httpx.get(server.url + "/static/..%2Fservice.py").status_code == 404
    assert httpx.get(server.url + "/static/nope.js").status_code == 404
    # nothing is fetched from elsewhere: no absolute URLs in the page's files
    for f in STATIC_DIR.iterdir():
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", f.read_text(encoding="utf-8"), re.I), f.name


# --- in the browser -------------------------------------------------------------------


def test_answer_then_citation_click_highlights_the_quote(page, tmp_path):
    body = _ask(page, ANSWERABLE)
    assert body["answerable"] and body["citations"], body
    page.wait_for_selector("#answer-box:not([hidden])")
    markers = page.locator("#answer-text button.cite")
    assert markers.count() >= 1, page.inner_text("#answer-text")
    # the page shows the answer text (markers included) and the cited sources
    assert page.inner_text("#answer-text").replace("\n", "").strip() == body["answer"].replace("\n", "").strip()
    assert page.locator("#citations > li").count() == len(body["citations"])
    assert page.locator("#hits > li").count() == len(body["hits"])
    assert page.locator("#hits .badge").first.inner_text() in {"EN", "中文"}

    first = markers.first
    cite_id = first.get_attribute("data-cite-id")
    citation = next(c for c in body["citations"] if str(c["id"]) == cite_id)
    first.click()
    mark = page.locator("#viewer-text mark#highlight")
    mark.wait_for()
    assert mark.text_content() == citation["quote"]
    assert page.inner_text("#viewer-title") == citation["title"]
    # the highlight is scrolled into view inside the document panel
    in_view = page.evaluate(
        """() => { const m = document.querySelector('#highlight').getBoundingClientRect();
                   const v = document.querySelector('#viewer-text').getBoundingClientRect();
                   return m.top >= v.top - 1 && m.top < v.bottom && m.top < window.innerHeight; }"""
    )
    assert in_view
    # the marked span is exactly [start, end) of the source document
    doc = httpx.get(f"{page.url.rstrip('/')}/documents/{citation['doc_id']}").json()
    assert doc["text"][citation["start"] : citation["end"]] == citation["quote"]
    shot = tmp_path / "answer-citation.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_no_answer_state_shows_nearest_hits(page, tmp_path):
    body = _ask(page, UNANSWERABLE)
    assert body["answerable"] is False, body["answer"]
    page.wait_for_selector("#noanswer-box:not([hidden])")
    assert page.locator("#answer-box").is_hidden()
    assert "No answer in these documents" in page.inner_text("#noanswer-box")
    assert page.locator("#hits > li").count() == len(body["hits"])
    if body["hits"]:
        assert page.inner_text("#hits-title") == "Nearest passages"
    page.screenshot(path=str(tmp_path / "no-answer.png"))


def test_passages_only_search_and_hit_opens_its_span(page, seed_service):
    page.check("input[name='what'][value='search']")
    page.fill("#q", "博鳌乐城 干细胞")
    with page.expect_response(lambda r: urlparse(r.url).path == "/search") as info:
        page.click("#go")
    hits = info.value.json()["hits"]
    assert hits
    page.wait_for_selector("#hits > li")
    assert page.locator("#answer-box").is_hidden() and page.locator("#noanswer-box").is_hidden()
    first = page.locator("#hits > li").first
    assert first.locator(".badge").inner_text() == ("中文" if hits[0]["lang"] == "zh" else "EN")
    assert f"{hits[0]['score']:.4f}" in first.locator(".score").inner_text()
    first.locator("a.src-title").click()
    mark = page.locator("#highlight")
    mark.wait_for()
    text = seed_service.snapshot.index.documents[hits[0]["doc_id"]].text
    assert mark.text_content() == text[hits[0]["start"] : hits[0]["end"]]


def test_filters_are_sent_and_server_errors_are_shown(page):
    page.check("input[name='what'][value='search']")
    page.check("input[name='lang'][value='zh']")
    page.fill("#region", "Atlantis")
    page.fill("#q", "stem cell")
    with page.expect_request(lambda r: urlparse(r.url).path == "/search") as req:
        page.press("#q", "Enter")
    sent = req.value.post_data_json
    assert sent["filters"] == {"lang": ["zh"], "region": ["Atlantis"]}
    page.wait_for_selector("#error:not([hidden])")
    assert "unknown region" in page.inner_text("#error")
    # a valid filter afterwards clears the message and only Chinese passages come back
    page.fill("#region", "海南")
    with page.expect_response(lambda r: urlparse(r.url).path == "/search") as info:
        page.press("#q", "Enter")
    assert info.value.status == 200
    page.wait_for_selector("#hits > li")
    assert page.locator("#error").is_hidden()
    assert set(page.locator("#hits .badge").all_inner_texts()) == {"中文"}


def test_internal_server_error_is_a_message(page):
    page.route("**/ask", lambda route: route.fulfill(status=500, content_type="application/json", body='{"detail": "boom: index exploded"}'))
    page.fill("#q", "stem cell")
    page.press("#q", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "boom: index exploded" in page.inner_text("#error")
    assert page.locator("#status").is_hidden() and page.locator("#go").is_enabled()


def test_empty_query_is_prevented(page):
    sent = []
    page.on("request", lambda r: sent.append(r.url) if urlparse(r.url).path in ("/ask", "/search") else None)
    assert page.locator("#go").is_disabled()
    page.fill("#q", "   ")
    page.press("#q", "Enter")
    page.wait_for_selector("#form-hint:not([hidden])")
    assert page.inner_text("#form-hint") == "Type a question first."
    page.wait_for_timeout(300)
    assert sent == []


def test_labels_switch_between_english_and_chinese(page):
    assert page.inner_text("#go") == "Search" and page.get_attribute("html", "lang") == "en"
    page.click("#lang-toggle")
    assert page.inner_text("#go") == "搜索"
    assert page.get_attribute("html", "lang") == "zh-Hans"
    assert "提问" in page.get_attribute("#q", "placeholder")
    assert page.inner_text("#lang-toggle") == "English"
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert page.inner_text("#go") == "搜索"  # remembered
    page.click("#lang-toggle")
    assert page.inner_text("#go") == "Search"


def test_upload_from_the_page_then_search_finds_it(browser, fresh_service, tmp_path):
    from playwright.sync_api import expect

    from qiao.service.core import collect_documents

    service = fresh_service()
    service.build(collect_documents(service.settings).documents, progress=False)
    upload = tmp_path / "xenotransplant.md"
    upload.write_text(
        "# Zhejiang pilot on porcine kidney xenotransplantation\n\nRelease Date: 2024-06-01\n\n"
        "The Zhejiang Provincial Health Commission approved porcine kidney xenotransplantation research "
        "at three Hangzhou hospitals.\n",
        encoding="utf-8",
    )
    with LiveServer(service) as srv:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        resp, before = upload_through_page(pg, srv.url, upload)
        assert resp.status == 201, resp.text()
        expect(pg.locator("#doc-rows tr")).to_have_count(before + 1)
        assert "xenotransplant.md" in pg.inner_text("#manage-status")
        pg.check("input[name='what'][value='search']")
        pg.fill("#q", "porcine kidney xenotransplantation Hangzhou")
        pg.press("#q", "Enter")
        pg.wait_for_selector("#hits > li")
        assert "xenotransplant.md" in pg.locator("#hits > li").first.inner_text()
        context.close()
