"""Optional LLM answers (qa/llm.py): the citation validator, the fallback, and ChatOpenAI over HTTP.

No model server is available here, so the model is LangChain's fake chat models, and once a
tiny OpenAI-compatible stub on a loopback port (to exercise the real ``ChatOpenAI`` wiring).
"""

from __future__ import annotations

import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage

from qiao.qa.llm import evidence_block, llm_enabled, maybe_llm_answer, validate_cited_text
from qiao.qa.models import Answer, Citation
from qiao.settings import Settings
from support import free_port


def _citation(i: int, doc: str, quote: str, date: str | None = "2023-07-27") -> Citation:
    return Citation(id=i, doc_id=doc, source=f"{doc}.txt", title=f"Title {doc}", start=10 * i, end=10 * i + len(quote), quote=quote, date=date, regions=())


@pytest.fixture()
def answer() -> Answer:
    cites = [
        _citation(1, "aaa", "Tianjin approved a pilot of cell therapy."),
        _citation(2, "bbb", "Beijing supports stem cell clinical research.", "2021-03-18"),
        _citation(3, "ccc", "Hainan's Boao Lecheng catalog lists 17 new technologies.", None),
    ]
    return Answer(
        question="Which regions support cell therapy?", answer="Tianjin [1], Beijing [2] and Boao Lecheng [3].",
        answerable=True, citations=cites, hits=[], took_ms=1.0, qtype="list", lang="en",
    )


SEEN: list = []  # prompts given to RecordingFake


class RecordingFake(FakeListChatModel):
    """FakeListChatModel that remembers the prompts it was given (in SEEN)."""

    def _call(self, messages, stop=None, run_manager=None, **kwargs):
        SEEN.append(messages)
        return super()._call(messages, stop=stop, run_manager=run_manager, **kwargs)


# --- the validator alone -----------------------------------------------------------------------


def test_invalid_markers_and_uncited_statements_are_dropped():
    v = validate_cited_text(
        "Tianjin approved a pilot in 2023 [1]. Beijing supports stem cells [2][5]. The sky is blue. "
        "The fund is 1.5 billion yuan [7]. Hainan lists 17 technologies [3, 9].",
        {1, 2, 3},
    )
    assert v.text == "Tianjin approved a pilot in 2023 [1]. Beijing supports stem cells [2]. Hainan lists 17 technologies [3]."
    assert v.cited == [1, 2, 3]
    assert v.dropped == ["The sky is blue.", "The fund is 1.5 billion yuan [7]."]
    assert sorted(v.removed_markers) == [5, 7, 9]


def test_chinese_markers_sources_section_and_layout():
    v = validate_cited_text("天津批准了试点【1】。北京支持干细胞研究[4]。上海也支持[2]。\n\n来源：\n[1] 天津文件\n[2] 上海文件", {1, 2})
    assert v.text == "天津批准了试点[1]。上海也支持[2]。"
    assert v.cited == [1, 2] and v.removed_markers == [4]
    bullets = validate_cited_text("- Tianjin, e.g. its FTZ, runs a pilot [2]\n- Atlantis does too [8]\n- Beijing funds research [1]", {1, 2})
    assert bullets.text == "- Tianjin, e.g. its FTZ, runs a pilot [2]\n- Beijing funds research [1]"
    assert bullets.cited == [2, 1]
    para = validate_cited_text("First point [1].\n\nSecond point. [2]\n\nUncited point.", {1, 2})
    assert para.text == "First point [1].\n\nSecond point. [2]"


@pytest.mark.parametrize("text", ["", "No markers at all. None here either.", "Only bad ones [0]. And [4].", "Sources:\n[1] a file"])
def test_nothing_valid_gives_none(text):
    assert validate_cited_text(text, {1, 2, 3}) is None


# --- the hook with fake chat models ---------------------------------------------------------------


def test_llm_answer_is_validated_and_citations_renumbered(answer):
    fake = RecordingFake(responses=["Beijing supports stem cell clinical research [2]. Shanghai too [9]. Everyone agrees. Hainan lists 17 technologies [3]."])
    SEEN.clear()
    out = maybe_llm_answer(answer, Settings(), llm=fake)
    assert out is not answer
    assert out.answer == "Beijing supports stem cell clinical research [1]. Hainan lists 17 technologies [2]."
    assert [(c.id, c.doc_id) for c in out.citations] == [(1, "bbb"), (2, "ccc")]
    assert out.citations[0].quote == answer.citations[1].quote and out.answerable and out.question == answer.question
    assert answer.answer.startswith("Tianjin [1]") and len(answer.citations) == 3  # the input is not mutated
    # the model saw the question and numbered evidence with titles, files and dates
    (messages,) = SEEN
    prompt = "\n".join(m.content for m in messages)
    assert "Which regions support cell therapy?" in prompt and "[2] (Title bbb, bbb.txt, 2021-03-18) Beijing supports" in prompt
    assert "English" in prompt


def test_fallback_to_extractive_when_nothing_valid_remains(answer):
    for reply in ["Cell therapy is popular everywhere.", "Shanghai [7]. Shenzhen [0]."]:
        out = maybe_llm_answer(answer, Settings(), llm=GenericFakeChatModel(messages=iter([AIMessage(content=reply)])))
        assert out is answer


def test_fallback_when_the_model_fails(answer):
    class Broken(FakeListChatModel):
        def _call(self, *a, **kw):
            raise ConnectionError("model server down")

    assert maybe_llm_answer(answer, Settings(), llm=Broken(responses=["x"])) is answer


def test_off_by_default_and_not_called_without_evidence(answer):
    assert not llm_enabled(Settings()) and not llm_enabled(Settings(llm_base_url="http://x/v1"))
    assert llm_enabled(Settings(llm_base_url="http://x/v1", llm_model="m"))
    assert maybe_llm_answer(answer, Settings()) is answer  # not configured: no model is even built
    SEEN.clear()
    unanswerable = Answer(question="q", answer="The documents do not say.", answerable=False, citations=[], hits=[], took_ms=0.0)
    assert maybe_llm_answer(unanswerable, Settings(), llm=RecordingFake(responses=["x [1]."])) is unanswerable
    assert SEEN == []


def test_chinese_question_asks_for_chinese(answer):
    SEEN.clear()
    maybe_llm_answer(answer, Settings(), question="哪些地区支持细胞治疗？", llm=RecordingFake(responses=["北京支持[2]。"]))
    assert "Chinese" in SEEN[0][0].content
    assert evidence_block(answer.citations).splitlines()[2] == "[3] (Title ccc, ccc.txt) Hainan's Boao Lecheng catalog lists 17 new technologies."


# --- ChatOpenAI against an OpenAI-compatible stub on a loopback port --------------------------------


@pytest.fixture()
def stub_llm_url():
    """An OpenAI-compatible server whose model answers with one valid and one invalid citation."""
    app = FastAPI()
    app.state.requests = []

    @app.post("/v1/chat/completions")
    async def complete(request: Request):
        body = await request.json()
        app.state.requests.append(body)
        text = "Tianjin approved a pilot of cell therapy [1]. Mars has one as well [12]."
        return {
            "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", app.state.requests
    server.should_exit = True
    thread.join(timeout=10)


def test_chat_openai_from_settings(answer, stub_llm_url):
    url, requests = stub_llm_url
    settings = Settings(llm_base_url=url, llm_model="stub-model", llm_api_key="secret", llm_timeout=10)
    out = maybe_llm_answer(answer, settings)
    assert out.answer == "Tianjin approved a pilot of cell therapy [1]."
    assert [c.doc_id for c in out.citations] == ["aaa"]
    assert requests and requests[0]["model"] == "stub-model" and requests[0]["temperature"] == 0
    # an unreachable model server falls back to the extractive answer
    dead = Settings(llm_base_url=f"http://127.0.0.1:{free_port()}/v1", llm_model="m", llm_timeout=2)
    assert maybe_llm_answer(answer, dead) is answer


# --- wired into the /ask pipeline (and so into /ask and /v1/chat/completions) -------------------------

QUESTION = "When did Tianjin issue the regulations on promoting the gene and cell industry?"


def test_ask_pipeline_and_endpoints_use_the_llm_only_when_configured(seed_service, stub_llm_url):
    from fastapi.testclient import TestClient

    from qiao.api.app import create_app
    from qiao.service.core import QiaoService
    from qiao.qa.pipeline import AnswerEngine, engine_for

    url, requests = stub_llm_url
    snap = seed_service.snapshot
    plain = engine_for(snap, seed_service.settings).ask(QUESTION)
    assert plain.answerable and "Mars" not in plain.answer and not requests  # off by default

    settings = seed_service.settings.model_copy(update={"llm_base_url": url, "llm_model": "stub-model"})
    a = AnswerEngine(snap.index, snap.retriever, settings).ask(QUESTION)
    assert a.answer == "Tianjin approved a pilot of cell therapy [1]." and a.answerable
    assert a.citations == [plain.citations[0]] and a.hits == plain.hits
    prompt = requests[-1]["messages"][-1]["content"]
    assert QUESTION in prompt and all(" ".join(c.quote.split()) in prompt for c in plain.citations)

    service = QiaoService(settings)
    service._embedder = seed_service.embedder  # same model and cache, no second load
    service.load()
    with TestClient(create_app(settings, service)) as c:
        r = c.post("/ask", json={"question": QUESTION})
        assert r.status_code == 200 and r.json()["answer"] == a.answer and len(r.json()["citations"]) == 1
        chat = c.post("/v1/chat/completions", json={"model": "qiao", "messages": [{"role": "user", "content": QUESTION}]}).json()
        content = chat["choices"][0]["message"]["content"]
        assert content.startswith("Tianjin approved a pilot of cell therapy [1].\n\nSources:\n- [1] ")
        assert "Mars" not in content and [x["id"] for x in chat["citations"]] == [1]
