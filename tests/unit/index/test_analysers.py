"""Tests for index.analysers (tokenisation) and index.glossary (cross-lingual query expansion)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from qiao.index import analysers, glossary
from qiao.index.analysers import analyser_fingerprint, match_keys, to_simplified, tokenize, tokenize_many
from qiao.index.glossary import bridge_terms, expand_query, glossary_entries, reload_glossary

CORPUS = Path(__file__).resolve().parents[3] / "corpus" / "documents"


# ----------------------------------------------------------------------------- Traditional / Simplified

def test_to_simplified_folds_both_spellings_of_stem_cell():
    assert to_simplified("幹細胞") == "干细胞"
    assert to_simplified("干細胞") == "干细胞"
    assert to_simplified("博鰲樂城國際醫療旅遊先行區") == "博鳌乐城国际医疗旅游先行区"
    assert to_simplified("CAR-T cells 2023") == "CAR-T cells 2023"  # non-Chinese untouched
    assert to_simplified("幹\ud800細胞") == "干\ufffd细胞"  # lone surrogate does not crash OpenCC


@pytest.mark.parametrize(
    "simplified, traditional, shared",
    [
        ("干细胞临床研究", "幹細胞臨床研究", "干细胞"),
        ("干细胞临床研究", "干細胞臨床研究", "临床研究"),
        ("细胞治疗", "細胞治療", "细胞治疗"),
        ("天津", "天津", "天津"),
        ("博鳌乐城", "博鰲樂城", "博鳌乐城"),
        ("药品监督管理局", "藥品監督管理局", "药品监督管理局"),
    ],
)
def test_simplified_query_matches_traditional_text(simplified, traditional, shared):
    assert shared in set(tokenize(simplified)) & set(tokenize(traditional))
    assert tokenize(simplified) == tokenize(traditional)


# ----------------------------------------------------------------------------- Chinese segmentation

def test_user_dictionary_keeps_domain_terms_whole():
    toks = tokenize("支持自贸区内医疗机构开展干细胞临床试验先行先试")
    for term in ("干细胞", "先行先试", "自贸区", "医疗机构", "临床试验"):
        assert term in toks
    assert tokenize("干细胞")[0] == "干细胞"  # the whole word first, then its parts
    assert "干" not in tokenize("干细胞")


def test_search_mode_adds_subwords_without_straddling_pieces():
    toks = tokenize("上海市人民政府 间充质干细胞 深圳市人大常委会")
    for sub in ("上海市人民政府", "人民政府", "政府", "间充质干细胞", "干细胞", "细胞", "常委会", "人大"):
        assert sub in toks
    assert "民政" not in toks and "海市" not in toks  # jieba's 2-gram scan would emit these


def _precise(monkeypatch):
    """The analyser in precise mode (QIAO_ANALYSER_CHINESE_MODE=precise) for one test."""
    import dataclasses

    before = analysers.current_config()
    monkeypatch.setattr(analysers, "_config", before)  # restored after the test, whatever happens
    analysers.configure(dataclasses.replace(before, chinese_mode="precise"))


def test_precise_mode_is_configurable(monkeypatch):
    _precise(monkeypatch)
    assert tokenize("在天津自贸区开展细胞治疗先行先试的报告") == ["天津", "自贸区", "开展", "细胞治疗", "先行先试", "报告"]


def test_chinese_stop_words_and_punctuation_removed():
    toks = tokenize("哪些地区的干细胞临床研究是如何备案的？（试点）")
    for stop in ("的", "哪些", "是", "如何", "？", "（", "）"):
        assert stop not in toks
    assert {"地区", "干细胞", "备案", "试点"} <= set(toks)


# ----------------------------------------------------------------------------- English

def test_english_stemming_and_stop_words():
    assert tokenize("Which regions allow stem cell clinical trials?") == [
        "region", "allow", "stem", "cell", "clinic", "trial",
    ]
    assert tokenize("trials") == tokenize("trial") == ["trial"]
    assert tokenize("therapies") == tokenize("therapy")
    assert tokenize("the of and which what is are not to in on") == []
    assert tokenize("Clinical") == ["clinic"]  # kept (stemmed), not a stop word


def test_numbers_and_full_width_digits_kept():
    assert "2023" in tokenize("On July 27, 2023 the regulations passed")
    assert tokenize("２０２３年") == tokenize("2023年") == ["2023"]
    assert "0255" in tokenize("第 0255 號代表建議")


@pytest.mark.parametrize("variant", ["CAR-T", "car-t", "Car-T", "ＣＡＲ－Ｔ", "CAR\u2011T"])
def test_car_t_tokenized_consistently(variant):
    assert tokenize(variant) == ["car-t", "car"]
    assert tokenize(f"{variant} cell products")[:2] == ["car-t", "car"]


def test_apostrophes_and_hyphens():
    assert tokenize("people's congress") == tokenize("peoples congress")
    assert tokenize("Xi'an") == tokenize("Xi\u2019an") == ["xian"]
    assert tokenize("graft-versus-host")[0] == "graft-versus-host"
    assert match_keys("high-tech zone") == match_keys("high tech zone") == ["high", "tech", "zone"]


def test_mixed_text_keeps_order_and_both_scripts():
    toks = tokenize("CAR-T细胞治疗 pilot in 天津自貿試驗區 since 2021年")
    assert toks[:5] == ["car-t", "car", "细胞治疗", "细胞", "治疗"]
    assert "pilot" in toks and "天津" in toks and "自贸试验区" in toks and "2021" in toks
    assert toks.index("pilot") < toks.index("天津") < toks.index("2021")


def test_tokenize_many_matches_tokenize_and_is_deterministic():
    texts = [p.read_text(encoding="utf-8") for p in sorted(CORPUS.glob("*.txt"))]
    assert texts, "seed corpus missing"
    batch = tokenize_many(texts)
    assert batch == [tokenize(t) for t in texts]
    assert all(batch)
    # the Traditional timeline yields Simplified tokens only
    zh = tokenize(next(t for t in texts if "衛生健康委員會" in t))
    assert "卫生健康委员会" in zh and not any(t in zh for t in ("衛生健康委員會", "幹細胞", "細胞"))


def test_thread_safe():
    texts = ["幹細胞臨床研究 stem cell trials", "天津自貿區 CAR-T", "深圳經濟特區細胞和基因產業促進條例"] * 50
    expected = [tokenize(t) for t in texts]
    analysers._segment_cached.cache_clear()
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(tokenize, texts)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t",
        "😀🧬🇨🇳",
        "\x00\x01\x02\x7f\x1b[31m",
        "\ud800\udfff broken surrogates 幹\ud800細胞",
        "，。、；：？！“”（）《》【】",
        "a" * 200_000,
        "细胞" * 50_000 + " stem cell " * 5_000,
        "\u200b\u200d\ufeff zero width",
        "".join(chr(c) for c in range(0, 0x3100)),  # every BMP character up to CJK punctuation
    ],
)
def test_hostile_input_never_raises(text):
    toks = tokenize(text)
    assert isinstance(toks, list) and all(isinstance(t, str) and t for t in toks)
    assert all(len(t) <= analysers.MAX_LATIN_TOKEN_CHARS or re.search("[\u4e00-\u9fff]", t) for t in toks)
    assert isinstance(expand_query(text), list)
    assert isinstance(bridge_terms(text), list)


def test_symbols_only_give_no_tokens():
    assert tokenize("😀 —— ！！ \x00") == []


def test_fingerprint_is_stable_and_mode_sensitive(monkeypatch):
    fp = analyser_fingerprint()
    assert re.fullmatch("[0-9a-f]{16}", fp) and fp == analyser_fingerprint()
    _precise(monkeypatch)
    assert analyser_fingerprint() != fp


# ----------------------------------------------------------------------------- glossary

def test_expand_english_query_into_chinese():
    q = "which regions allow stem cell clinical trials"
    added = expand_query(q)
    assert tokenize("干细胞")[0] in added
    assert set(tokenize("临床试验")) <= set(added)
    assert not set(added) & set(tokenize(q))  # only new tokens
    assert len(added) == len(set(added))
    assert ("stem cell", "干细胞") in bridge_terms(q)


def test_expand_chinese_query_into_english():
    added = expand_query("天津 细胞治疗 先行先试")
    assert {"tianjin", "cell", "therapi", "pilot"} <= set(added)
    assert not any(re.search("[\u4e00-\u9fff]", t) for t in added if t not in tokenize("试点"))


def test_expand_traditional_query():
    added = expand_query("幹細胞臨床研究備案")
    assert {"stem", "cell", "clinic", "research", "file"} <= set(added)


def test_english_plurals_and_stop_words_inside_phrases_match():
    assert ("stem cell", "干细胞") in bridge_terms("Stem Cells")
    pairs = bridge_terms("Ministry of Science & Technology")
    assert ("Ministry of Science and Technology", "科技部") in pairs


def test_longest_match_wins():
    pairs = bridge_terms("pilot free trade zone")
    assert ("pilot free trade zone", "自贸试验区") in pairs
    assert not any(target == "试点" for _, target in pairs)  # "pilot" alone not matched inside it
    zh_pairs = bridge_terms("间充质干细胞")
    assert {src for src, _ in zh_pairs} == {"间充质干细胞"}


def test_alias_adds_same_language_canonical_and_match_only_alias_is_not_emitted():
    assert "卫生健康委员会" in expand_query("卫健委")
    assert "备案" in expand_query("record filing")
    assert "record" not in expand_query("备案")
    assert "file" in expand_query("备案")


def test_expansion_is_deterministic():
    q = "NMPA approval of CAR-T cell therapies in Hainan Boao Lecheng"
    assert expand_query(q) == expand_query(q)
    assert tokenize("嵌合抗原受体")[0] in expand_query(q)


def test_no_match_gives_empty():
    assert expand_query("hello world") == []
    assert bridge_terms("") == []


def test_glossary_data_quality():
    terms = [e for e in glossary_entries() if e.kind == "term"]
    assert len(terms) >= 150
    keys = [tuple(match_keys(e.en)) for e in terms]
    dupes = {k for k in keys if keys.count(k) > 1}
    assert not dupes, f"duplicate English terms: {dupes}"
    zh = [to_simplified(e.zh) for e in terms]
    assert len(zh) == len(set(zh)), "duplicate Chinese terms"
    for e in terms:
        assert tokenize(e.zh), e
        assert tokenize(e.en) or match_keys(e.en), e


def test_regions_come_from_gazetteer_when_present():
    try:
        from qiao.corpus import gazetteer

        regions = gazetteer.all_regions()
    except Exception:
        pytest.skip("corpus.gazetteer not available")
    reload_glossary()
    ours = [e for e in glossary_entries() if e.kind == "region"]
    assert len(ours) == len([r for r in regions if r.en and r.zh_hans])
    assert {e.en for e in ours} == {r.en for r in regions if r.en and r.zh_hans}


def test_malformed_glossary_line_is_reported(tmp_path, monkeypatch):
    bad = tmp_path / "glossary.tsv"
    bad.write_text("stem cell\t干细胞\n细胞治疗\tcell therapy\n", encoding="utf-8")
    with pytest.raises(ValueError, match="glossary.tsv:2"):
        glossary._read_tsv(bad, "term")
