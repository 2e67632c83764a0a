"""The OpenAI-compatible endpoint: the official ``openai`` client against a real server, malformed requests, follow-ups."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from qiao.api.app import create_app
from qiao.api.routes_openai import split_for_stream
from qiao.service.followup import follow_up_rest, resolve_question
from qiao.qa.pipeline import engine_for

QUESTION = "When did Tianjin issue the regulations on promoting the gene and cell industry?"


@pytest.fixture(scope="module")
def base_url(seed_server):
    return seed_server.url


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tc(seed_service):
    with TestClient(create_app(seed_service.settings, seed_service)) as c:
        yield c


def _expected(seed_service, question: str, k: int = 8):
    return engine_for(seed_service.snapshot, seed_service.settings).ask(question, k=k)


# --- the official client against the real server ---------------------------------------------------


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["qiao"]
    assert client.models.retrieve("qiao").owned_by == "qiao"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_non_streaming_answer_with_sources(client, seed_service):
    r = client.chat.completions.create(model="qiao", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}])
    assert r.object == "chat.completion" and r.model == "qiao" and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    content = choice.message.content
    expected = _expected(seed_service, QUESTION)
    assert expected.answerable and expected.citations
    # the answer text with its [n] markers, then the sources list
    answer_part, sources = content.split("\n\nSources:\n")
    assert answer_part == expected.answer.rstrip() and "[1]" in answer_part and "July 27, 2023" in answer_part
    lines = sources.splitlines()
    assert len(lines) == len(expected.citations)
    # structured citations in the extra field; each quote is the exact span of the source file
    extra = r.model_extra
    assert extra["answerable"] is True and extra["question"] == QUESTION
    docs = seed_service.snapshot.index.documents
    for line, c in zip(lines, extra["citations"]):
        assert docs[c["doc_id"]].text[c["start"] : c["end"]] == c["quote"]
        title = c["title"] if len(c["title"]) <= 90 else c["title"][:80]
        assert line.startswith(f"- [{c['id']}] {title}") and f" — {c['source']}" in line
        assert " ".join(c["quote"].split()) in line
        if c["date"]:
            assert c["date"] in line
    assert extra["citations"] == [c.to_dict() for c in expected.citations]


def test_streaming_matches_non_streaming(client):
    messages = [{"role": "user", "content": QUESTION}]
    full = client.chat.completions.create(model="qiao", messages=messages)
    chunks = list(client.chat.completions.create(model="qiao", messages=messages, stream=True))
    assert len(chunks) >= 4 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == full.choices[0].message.content
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop" and all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert last.model_extra["citations"] == full.model_extra["citations"] and last.model_extra["answerable"] is True


def test_raw_sse_wire_format(base_url):
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json={"model": "qiao", "stream": True, "messages": [{"role": "user", "content": QUESTION}]}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()
    events = body.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_chinese_question_and_extras(client, seed_service):
    q = "哪些地区支持干细胞临床研究？"
    r = client.chat.completions.create(model="qiao", messages=[{"role": "user", "content": q}], extra_body={"k": 6, "filters": {"lang": ["zh"]}})
    content = r.choices[0].message.content
    assert "\n\n来源：\n- [1] " in content
    assert r.model_extra["citations"] and all(
        seed_service.snapshot.index.documents[c["doc_id"]].lang == "zh" for c in r.model_extra["citations"]
    )
    trad = client.chat.completions.create(model="qiao", messages=[{"role": "user", "content": "哪些地區支持幹細胞臨床研究？"}])
    assert "\n\n來源：\n" in trad.choices[0].message.content


def test_follow_up_carries_the_topic_over(client, seed_service):
    first = "Which policies support stem cell clinical research in Tianjin?"
    messages = [
        {"role": "user", "content": first},
        {"role": "assistant", "content": "Tianjin ... [1]"},
        {"role": "user", "content": "and in Beijing?"},
    ]
    r = client.chat.completions.create(model="qiao", messages=messages)
    assert r.model_extra["question"] == "Which policies support stem cell clinical research in Beijing?"
    expected = _expected(seed_service, "Which policies support stem cell clinical research in Beijing?")
    assert r.choices[0].message.content.startswith(expected.answer.rstrip())
    assert any("Beijing" in c["regions"] for c in r.model_extra["citations"])
    # a new, self-contained question ignores the history
    messages[-1]["content"] = "How many cell and gene therapy products are in clinical trials?"
    r2 = client.chat.completions.create(model="qiao", messages=messages)
    assert r2.model_extra["question"] == messages[-1]["content"]


def test_client_errors_surface_as_openai_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="qiao", messages=[{"role": "wizard", "content": "hi"}])
    assert e.value.status_code == 400 and e.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="qiao", messages=[])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="qiao", messages=[{"role": "user", "content": 42}], stream=True)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found"


# --- malformed requests through the TestClient ------------------------------------------------------

U = {"role": "user", "content": "stem cell"}


@pytest.mark.parametrize(
    "body, status, param, needle",
    [
        ({"model": "qiao"}, 400, "messages", "required"),
        ({"model": "qiao", "messages": []}, 400, "messages", "at least one"),
        ({"model": "qiao", "messages": "hello"}, 400, "messages", "array"),
        ({"model": "qiao", "messages": ["hello"]}, 400, "messages[0]", "object"),
        ({"model": "qiao", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", "wizard"),
        ({"model": "qiao", "messages": [{"content": "hi"}]}, 400, "messages[0].role", "None"),
        ({"model": "qiao", "messages": [U, {"role": "assistant", "content": "ok"}]}, 400, "messages[1].role", "last message"),
        ({"model": "qiao", "messages": [{"role": "system", "content": "be nice"}]}, 400, "messages[0].role", "last message"),
        ({"model": "qiao", "messages": [{"role": "user", "content": 42}]}, 400, "messages[0].content", "int"),
        ({"model": "qiao", "messages": [{"role": "user", "content": {"text": "hi"}}]}, 400, "messages[0].content", "dict"),
        ({"model": "qiao", "messages": [{"role": "user", "content": None}]}, 400, "messages[0].content", "null"),
        ({"model": "qiao", "messages": [{"role": "user"}]}, 400, "messages[0].content", "required"),
        ({"model": "qiao", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "messages[0].content[0]", "image_url"),
        ({"model": "qiao", "messages": [{"role": "user", "content": "   "}]}, 400, "messages[0].content", "empty"),
        ({"model": "qiao", "messages": [{"role": "user", "content": "x" * 2001}]}, 400, "messages[0].content", "2000"),
        ({"model": "qiao", "messages": [U], "stream": "yes"}, 400, "stream", "true or false"),
        ({"model": "qiao", "messages": [U], "n": 2}, 400, "n", "n=1"),
        ({"model": "qiao", "messages": [U], "k": 0}, 400, "k", "k must"),
        ({"model": "qiao", "messages": [U], "filters": {"region": ["Atlantis"]}}, 400, "filters.region", "Atlantis"),
        ({"model": "qiao", "messages": [U], "filters": {"colour": "red"}}, 400, "filters.colour", "colour"),
        ({"model": 7, "messages": [U]}, 400, "model", "string"),
        ({"model": "gpt-4o", "messages": [U]}, 404, "model", "gpt-4o"),
        ({"model": "qiao", "messages": [U], "filters": {"doc_id": ["nope"]}}, 404, "filters.doc_id", "nope"),
        ([U], 400, None, "JSON object"),
    ],
)
def test_malformed_requests_get_the_openai_error_shape(tc, body, status, param, needle):
    r = tc.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param and needle in err["message"]


def test_bad_json_and_the_other_routes_keep_their_shape(tc):
    r = tc.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = tc.post("/v1/chat/completions", content=b"")
    assert r.status_code == 400 and "error" in r.json()
    # /search still answers FastAPI's 422 shape
    r = tc.post("/search", json={"query": ""})
    assert r.status_code == 422 and "detail" in r.json() and "error" not in r.json()


def test_text_parts_and_tool_turns_are_accepted(tc):
    body = {
        "model": "qiao",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "When did Tianjin issue the regulations"}, {"type": "text", "text": "on promoting the gene and cell industry?"}]},
        ],
    }
    r = tc.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["question"] == "When did Tianjin issue the regulations\non promoting the gene and cell industry?"
    body["messages"] = [{"role": "assistant", "content": None, "tool_calls": []}, {"role": "tool", "content": "x", "tool_call_id": "1"}, U]
    assert tc.post("/v1/chat/completions", json=body).status_code == 200


def test_no_index_is_503_in_the_openai_shape(tmp_path):
    from qiao.settings import Settings

    with TestClient(create_app(Settings(data_dir=tmp_path))) as c:
        r = c.post("/v1/chat/completions", json={"model": "qiao", "messages": [U]})
        assert r.status_code == 503
        err = r.json()["error"]
        assert err["type"] == "server_error" and "qiao index" in err["message"]
        assert c.get("/v1/models").json()["data"][0]["id"] == "qiao"


# --- follow-up resolution and streaming pieces (no server) ------------------------------------------


def _users(*texts):
    return [("user", t) for t in texts]


@pytest.mark.parametrize(
    "turns, expected",
    [
        (("When did Tianjin approve the cell therapy pilot?", "and in Beijing?"), "When did Beijing approve the cell therapy pilot?"),
        (("Which policies support stem cell research in Tianjin?", "What about Beijing and Shanghai?"), "Which policies support stem cell research in Beijing and Shanghai?"),
        (("Which regions support stem cell clinical research?", "and in 2023?"), "Which regions support stem cell clinical research in 2023?"),
        (("北京市支持干细胞临床研究的政策有哪些？", "那上海呢？"), "上海支持干细胞临床研究的政策有哪些？"),
        (("北京市支持干细胞临床研究的政策有哪些？", "天津呢"), "天津支持干细胞临床研究的政策有哪些？"),
        (("What did Tianjin do for cell therapy?", "那北京呢？"), "What did Beijing do for cell therapy?"),
        (("When did Tianjin approve the pilot?", "and Beijing?", "還有海南呢？"), "When did Hainan approve the pilot?"),
        (("When did Tianjin approve the pilot?", "那些地区支持干细胞研究？"), "那些地区支持干细胞研究？"),
        (("When did Tianjin approve the pilot?", "Andrew Smith wrote which report on stem cell research policy in China?"), "Andrew Smith wrote which report on stem cell research policy in China?"),
        (("and in Beijing?",), "and in Beijing?"),
    ],
)
def test_resolve_question(turns, expected):
    messages = []
    for t in turns:
        messages += [("user", t), ("assistant", "an answer about Shanghai [1]")]
    assert resolve_question([t for role, t in messages[:-1] if role == "user"]) == expected


def test_follow_up_detection_and_stream_pieces():
    assert follow_up_rest("And what about Hainan?") == "Hainan"
    assert follow_up_rest("How about gene therapy") == "gene therapy"
    assert follow_up_rest("Which regions support stem cell research?") is None
    assert follow_up_rest("and what are the main rules for importing gene therapy products into free trade zones?") is None
    text = "天津市" * 30 + " and some English words here [1]\n- Sources: “quote” " * 3
    pieces = split_for_stream(text)
    assert "".join(pieces) == text and len(pieces) > 5 and max(map(len, pieces)) <= 24
