"""corpus/: loading, cleaning, metadata, gazetteer, sentence splitting and chunking."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from qiao.corpus.chunking import chunk_document, sentence_spans
from qiao.corpus.cleaning import clean_span, noise_spans
from qiao.corpus.gazetteer import (
    all_regions,
    display_name,
    expand_with_parents,
    find_regions,
    get_region,
    resolve_region,
)
from qiao.corpus.lang import detect_lang
from qiao.corpus.loader import DocumentError, document_from_text, load_document, load_documents
from qiao.corpus.metadata import extract_metadata, is_date_line, parse_date
from qiao.corpus.models import Document

SEED_DIR = Path(__file__).resolve().parents[3] / "corpus" / "documents"
NOISE_MARKERS = ("IMG_", "Return to List", "Prve:", "Next:", "baseline;", "font-size", "”>")


@pytest.fixture(scope="module")
def seeds() -> dict[str, Document]:
    result = load_documents(SEED_DIR)
    assert result.errors == []
    assert len(result.documents) == 5
    return {d.source[:3]: d for d in result.documents}


@pytest.fixture(scope="module")
def chunks(seeds) -> dict[str, list]:
    return {k: chunk_document(d, chunk_size=400, chunk_overlap=80) for k, d in seeds.items()}


def date_lines(text: str) -> list[str]:
    return [iso for line in text.splitlines() if (iso := is_date_line(line))]


# --- offsets and noise ----------------------------------------------------------------------


def test_every_chunk_span_is_exact_and_clean(seeds, chunks):
    for key, doc in seeds.items():
        cs = chunks[key]
        assert cs, key
        for i, c in enumerate(cs):
            assert c.chunk_id == f"{doc.doc_id}:{i:04d}"
            assert c.doc_id == doc.doc_id and c.source == doc.source and c.title == doc.title
            assert 0 <= c.start < c.end <= len(doc.text)
            raw = doc.text[c.start : c.end]
            assert c.text == clean_span(doc.text, c.start, c.end)
            assert c.text == clean_span(raw)  # the slice on its own cleans the same way
            assert raw == raw.strip() and c.text  # no whitespace at the edges
            for marker in NOISE_MARKERS:
                assert marker not in c.text, (c.chunk_id, marker)
            # spans never start or end inside noise
            for s, e in noise_spans(doc.text):
                assert not (s <= c.start < e) and not (s < c.end <= e), (c.chunk_id, doc.text[s:e])
        assert [c.start for c in cs] == sorted(c.start for c in cs)


def test_chunks_cover_all_text_but_noise_and_headings(seeds, chunks):
    for key, doc in seeds.items():
        covered = bytearray(len(doc.text))
        for c in chunks[key]:
            covered[c.start : c.end] = b"\x01" * (c.end - c.start)
        for s, e in noise_spans(doc.text):
            covered[s:e] = b"\x01" * (e - s)
        headings = {c.heading for c in chunks[key] if c.heading}
        if key == "001":
            headings.add("Local level")  # a heading directly above another heading has no entries of its own
        uncovered_lines = set()
        for m in re.finditer(r"[^\n]+", doc.text):
            if any(not covered[i] and not doc.text[i].isspace() for i in range(m.start(), m.end())):
                uncovered_lines.add(m.group().strip())
        assert uncovered_lines <= headings, (key, uncovered_lines - headings)


def test_002_css_residue_is_cut_but_prose_kept(seeds, chunks):
    doc = seeds["002"]
    spans = [doc.text[s:e] for s, e in noise_spans(doc.text)]
    assert spans == [
        "baseline;”>",
        "font-size: inherit; line-height: inherit; font-family: inherit; vertical-align: baseline;”>",
    ]
    joined = " ".join(c.text for c in chunks["002"])
    assert "empower industrial innovation and development," in joined
    assert "Tianjin Pilot Free Trade Zone Management Committee officially approved" in joined
    assert "accepted practices and standards. Organize and carry out" in joined


def test_000_navigation_and_images_are_noise(seeds):
    doc = seeds["000"]
    noise = [doc.text[s:e] for s, e in noise_spans(doc.text)]
    assert "IMG_256IMG_257" in noise and "IMG_258IMG_259" in noise and "Return to List" in noise
    assert any(n.startswith("Prve:NMPA issued") for n in noise)
    assert any(n.startswith("Next:Global clinical application") for n in noise)
    assert noise_spans("Chinese nav\n返回列表\n上一篇：某某通知\n下一篇: 另一篇") == [(12, 16), (17, 25), (26, 34)]


def test_cleaning_is_conservative():
    prose = [
        "The ratio is 3.5; the next step: approval. Next year we expand.",
        "Width: 3 cm; height: 2 cm.",
        "Costs < 5 million > 2 million; see Article 2.",
        "要点：支持干细胞研究；加强监管。",
    ]
    for p in prose:
        assert noise_spans(p) == [], p
        assert clean_span(p, 0, len(p)) == p
    assert clean_span("a <span style=\"color: red\">word</span> b") == "a word b"
    assert clean_span("x\u00a0 y  z\n\n\n\nw") == "x y z\n\nw"


# --- timelines ------------------------------------------------------------------------------------


def test_timeline_entries_one_chunk_per_date_line(seeds, chunks):
    for key, expected in (("001", 25), ("004", 12)):
        dates = date_lines(seeds[key].text)
        assert len(dates) == expected
        timeline = [c for c in chunks[key] if c.kind == "timeline"]
        assert [c.date for c in timeline] == dates
        for c in timeline:
            first_line = seeds[key].text[c.start : c.end].splitlines()[0]
            assert is_date_line(first_line) == c.date  # the span starts with its date line


def test_001_entries(chunks):
    cs = chunks["001"]
    national = [c for c in cs if c.heading == "At the national level"]
    assert len(national) == 13
    assert all(c.kind == "timeline" for c in national)
    tianjin = next(c for c in cs if c.date == "2023-07-27")
    assert tianjin.heading == "Tianjin City" and tianjin.kind == "timeline"
    assert tianjin.text.startswith("July 27, 2023\nThe fourth meeting of the Standing Committee")
    assert "Tianjin" in tianjin.regions
    shenzhen = next(c for c in cs if c.date == "2023-01-09")
    assert shenzhen.heading == "Shenzhen, Guangdong Province"
    assert {"Shenzhen", "Guangdong"} <= set(shenzhen.regions)
    typo = next(c for c in cs if c.text.startswith("August 29, 023"))
    assert typo.date == "2023-08-29"
    jinan = next(c for c in cs if c.date == "2023-08-28")
    assert jinan.heading == "Shandong Province" and {"Shandong", "Jinan"} <= set(jinan.regions)
    hebei = next(c for c in cs if c.date == "2023-04-07")
    assert {"Hebei", "Shijiazhuang", "Xiong'an"} <= set(hebei.regions)
    intro = [c for c in cs if c.kind == "prose"]
    assert intro and all(c.heading is None for c in intro)
    assert intro[0].text.startswith("Cells and genes are one of the most promising areas")


def test_004_entries(chunks):
    cs = chunks["004"]
    assert all(c.kind == "timeline" and c.lang == "zh" for c in cs)
    tianjin = next(c for c in cs if c.date == "2021-04-12")
    assert tianjin.heading == "天津市" and "Tianjin" in tianjin.regions
    assert tianjin.text.startswith("2021 年 4 月 12 日\n天津北方網報道")
    hainan = next(c for c in cs if c.date == "2021-01-08")
    assert hainan.heading == "海南省" and {"Hainan", "Boao Lecheng"} <= set(hainan.regions)
    nanshan = next(c for c in cs if c.date == "2021-06-08")
    assert nanshan.regions[:3] == ("Guangdong", "Nanshan", "Shenzhen")
    yunnan = next(c for c in cs if c.date == "2021-03-11")
    assert yunnan.heading == "云南省" and "Yunnan" in yunnan.regions  # simplified 云 in a Traditional text
    assert next(c for c in cs if c.date == "2021-02-21").heading == "河北省"


def test_long_timeline_entry_is_split_keeping_date_and_heading():
    entry = " ".join(f"Sentence number {i} talks about Shenzhen policy." for i in range(60))
    text = f"Intro line.\nGuangdong Province\nMarch 1, 2024\n{entry}\nMarch 2, 2024\nShort entry."
    doc = document_from_text(text, "t.txt")
    cs = chunk_document(doc, chunk_size=200, chunk_overlap=50)
    first = [c for c in cs if c.date == "2024-03-01"]
    assert len(first) > 3
    assert all(c.kind == "timeline" and c.heading == "Guangdong Province" for c in first)
    assert all(len(c.text) <= 200 for c in first)
    assert all({"Shenzhen", "Guangdong"} <= set(c.regions) for c in first)
    assert first[0].text.startswith("March 1, 2024")
    assert [c.text for c in cs if c.date == "2024-03-02"] == ["March 2, 2024\nShort entry."]


def test_prose_windows_and_overlap():
    sentences = [f"This is sentence {i} of a long paragraph about policy." for i in range(40)]
    doc = document_from_text(" ".join(sentences), "p.txt")
    cs = chunk_document(doc, chunk_size=200, chunk_overlap=60)
    assert len(cs) > 5
    for a, b in zip(cs, cs[1:]):
        assert len(a.text) <= 200
        assert b.start <= a.end  # overlapping (made of whole sentences) ...
        assert b.end > a.end  # ... but always moving forward
        assert doc.text[b.start : b.start + 4] == "This"


# --- metadata -------------------------------------------------------------------------------------------


def test_metadata_of_seeds(seeds):
    assert seeds["000"].date == "2025-03-12"
    assert seeds["000"].title.startswith("The second batch of cell and gene therapy")
    assert seeds["003"].date == "2024-04-26"
    assert seeds["002"].news_source == "China (Tianjin) Pilot Free Trade Zone Management Committee"
    assert seeds["002"].date is None
    assert seeds["004"].lang == "zh" and seeds["004"].title == "北京市"
    assert {d.lang for k, d in seeds.items() if k != "004"} == {"en"}
    assert all(len(d.doc_id) == 16 for d in seeds.values())


@pytest.mark.parametrize(
    "s, iso",
    [
        ("March 23, 2023", "2023-03-23"),
        ("Mar. 23, 2023", "2023-03-23"),
        ("23 March 2023", "2023-03-23"),
        ("2023-03-23", "2023-03-23"),
        ("2023/3/23", "2023-03-23"),
        ("2021 年 3 月 18 日", "2021-03-18"),
        ("2021年2月21日", "2021-02-21"),
        ("August 29, 023", "2023-08-29"),
        ("August 29, 123", None),
        ("February 30, 2023", None),
        ("no date here", None),
    ],
)
def test_parse_date(s, iso):
    assert parse_date(s) == iso


def test_is_date_line_and_labels():
    assert is_date_line("  March 23, 2023 ") == "2023-03-23"
    assert is_date_line("2021 年 3 月 18 日") == "2021-03-18"
    assert is_date_line("Release Date:2025-03-12") is None
    assert is_date_line("On March 23, 2023 the plan was issued.") is None
    meta = extract_metadata("標題\n發布日期：2025年3月12日\n來源：天津日報\n正文內容。", "x.txt")
    assert meta == {"title": "標題", "date": "2025-03-12", "news_source": "天津日報", "lang": "zh"}
    assert extract_metadata("T\nRelease date: 2025-3-12\n", "y.txt")["date"] == "2025-03-12"


def test_detect_lang():
    assert detect_lang("北京市衛生健康委員會發布") == "zh"
    assert detect_lang("Beijing issued a plan") == "en"
    assert detect_lang("天津 stem cell policy 干细胞") == "zh"
    assert detect_lang("") == "en" and detect_lang("12345") == "en"


# --- loader -----------------------------------------------------------------------------------------


def test_loader_errors_name_the_file(tmp_path):
    (tmp_path / "good.txt").write_text("A title\nSome text.", encoding="utf-8")
    (tmp_path / "notes.md").write_text("# Notes\n天津市发布方案。", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("line one\ncaf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "empty.txt").write_text(" \n\t\n", encoding="utf-8")
    (tmp_path / "zz_dup.txt").write_text("A title\nSome text.", encoding="utf-8")
    (tmp_path / "ignored.pdf").write_bytes(b"%PDF-1.4")

    result = load_documents(tmp_path)
    assert [d.source for d in result.documents] == ["good.txt", "notes.md"]
    errors = {e.source: e for e in result.errors}
    assert set(errors) == {"binary.txt", "zz_dup.txt", "empty.txt", "latin1.txt"}
    for name, e in errors.items():
        assert name in str(e)
    assert errors["latin1.txt"].line == 2 and "UTF-8" in errors["latin1.txt"].reason
    assert "line 2" in str(errors["latin1.txt"]) and "0xe9" in str(errors["latin1.txt"])
    assert "binary" in errors["binary.txt"].reason
    assert "empty" in errors["empty.txt"].reason
    assert "good.txt" in errors["zz_dup.txt"].reason

    with pytest.raises(DocumentError, match="ignored.pdf"):
        load_document(tmp_path / "ignored.pdf")
    with pytest.raises(DocumentError, match="does not exist"):
        load_documents(tmp_path / "missing")
    with pytest.raises(DocumentError, match="not a directory"):
        load_documents(tmp_path / "good.txt")


def test_loader_keeps_text_exact(tmp_path):
    raw = "\ufeffTitle line\r\nRelease Date: 2024-01-02\r\nBody text here.\r\n".encode("utf-8")
    (tmp_path / "crlf.txt").write_bytes(raw)
    doc = load_document(tmp_path / "crlf.txt")
    assert doc.text == raw.decode("utf-8") and doc.title == "Title line" and doc.date == "2024-01-02"
    import hashlib

    assert doc.doc_id == hashlib.sha256(raw).hexdigest()[:16]
    assert document_from_text(doc.text, doc.source).doc_id == doc.doc_id  # same id from text or bytes
    up = document_from_text("Uploaded\nText.", "up.html")
    assert up.doc_id == hashlib.sha256("Uploaded\nText.".encode()).hexdigest()[:16]
    with pytest.raises(DocumentError, match="up2"):
        document_from_text("   ", "up2")


# --- gazetteer ------------------------------------------------------------------------------------------


def test_gazetteer_table():
    regions = all_regions()
    provincial = [r for r in regions if r.kind in ("province", "municipality", "autonomous_region", "sar")]
    assert len(provincial) == 34
    keys = {r.key for r in regions}
    assert all(r.parent is None or r.parent in keys for r in regions)
    for key in ("Shenzhen", "Dalian", "Qingdao", "Xiamen", "Ningbo", "Suzhou", "Hangzhou", "Kunming", "Jinan",
                "Shijiazhuang", "Qinhuangdao", "Baoding", "Langfang", "Chengdu", "Wuhan", "Guangzhou", "Zhuhai",
                "Nanshan", "Xiaoshan", "Xiong'an", "Beijing E-Town", "Lingang", "Pudong", "Qianhai", "Hengqin",
                "Boao Lecheng", "Hainan Free Trade Port", "Tianjin FTZ", "Shandong FTZ", "Xinjiang FTZ",
                "Zhejiang FTZ", "Shanghai FTZ", "Dalian FTZ Area", "Hangzhou FTZ Area", "Jinan FTZ Area"):
        assert key in keys, key
    boao = get_region("Boao Lecheng")
    assert boao.parent == "Hainan" and boao.zh_hant == "博鰲樂城" and boao.kind == "pilot_zone"
    assert display_name("Tianjin") == "Tianjin 天津" and display_name("Boao Lecheng") == "Boao Lecheng 博鳌乐城"


@pytest.mark.parametrize(
    "name, key",
    [
        ("天津市", "Tianjin"), ("天津", "Tianjin"), ("Tianjin City", "Tianjin"), ("tianjin municipality", "Tianjin"),
        ("博鰲樂城", "Boao Lecheng"), ("博鳌乐城", "Boao Lecheng"), ("廣東省", "Guangdong"),
        ("Guangdong Province", "Guangdong"), ("广西壮族自治区", "Guangxi"), ("香港特別行政區", "Hong Kong"),
        ("Macau", "Macao"), ("南山區", "Nanshan"), ("Xiongan", "Xiong'an"), ("臺灣", "Taiwan"),
        ("中國（天津）自由貿易試驗區", "Tianjin FTZ"), ("Yizhuang", "Beijing E-Town"),
        ("China", None), ("Ji", None), ("", None),
    ],
)  # fmt: skip
def test_resolve_region(name, key):
    assert resolve_region(name) == key


def test_find_regions():
    assert find_regions("The Shenzhen-Hong Kong cooperation and Jilin Province.") == ["Shenzhen", "Hong Kong", "Jilin"]
    assert find_regions("China supports the industry in China.") == []
    assert find_regions("北京市和北京的政策") == ["Beijing"]
    assert find_regions("支持在博鰲樂城先行區開展") == ["Boao Lecheng"]
    assert find_regions("Hainan Boao Lecheng International Medical Tourism Pilot Zone") == ["Boao Lecheng"]
    assert find_regions("the China (Shandong) Free ** Pilot Zone in the Jinan Area") == ["Shandong FTZ", "Jinan FTZ Area"]
    assert find_regions("杭州市蕭山區發布《中國(浙江)自由貿易試驗區杭州片區》") == [
        "Hangzhou", "Xiaoshan", "Zhejiang FTZ", "Hangzhou FTZ Area",
    ]  # fmt: skip
    assert find_regions("浙江西部") == ["Zhejiang"]  # not 江西 (Jiangxi)
    assert find_regions("确保定期开展临港产业研究") == []  # 保定 / 临港 as ordinary words
    assert find_regions("Xiong’an New Area and Xiongan") == ["Xiong'an"]
    assert find_regions("Jilinx Hunanese") == []  # word boundaries
    assert expand_with_parents(["Nanshan", "Boao Lecheng", "Shenzhen"]) == [
        "Nanshan", "Shenzhen", "Guangdong", "Boao Lecheng", "Hainan",
    ]  # fmt: skip


# --- sentences -----------------------------------------------------------------------------------------


def test_sentence_spans_mixed():
    text = (
        "The U.S. FDA approved it on Jan. 5. Growth was 3.5% in 2023. See No. 5, e.g. the Dr. Li report! "
        "天津市发布了方案。支持细胞治疗；推动基因治疗？ Is it done? Yes.\n新的一行“引号。”Then end"
    )
    got = [text[s:e] for s, e in sentence_spans(text)]
    assert got == [
        "The U.S. FDA approved it on Jan. 5.",
        "Growth was 3.5% in 2023.",
        "See No. 5, e.g. the Dr. Li report!",
        "天津市发布了方案。",
        "支持细胞治疗；",
        "推动基因治疗？",
        "Is it done?",
        "Yes.",
        "新的一行“引号。”",
        "Then end",
    ]
    assert sentence_spans(text, 4, 35) == [(4, 35)]  # a window: offsets stay absolute
    end = text.index("report!") + len("report!")
    assert [text[s:e] for s, e in sentence_spans(text, 36, end)] == [
        "Growth was 3.5% in 2023.",
        "See No. 5, e.g. the Dr. Li report!",
    ]
    assert sentence_spans("") == [] and sentence_spans("   \n ") == []


# --- robustness -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t ",
        "IMG_1IMG_2\nReturn to List\nNext: x",
        "no newlines at all " * 200,
        "天" * 3000,
        "😀👨‍👩‍👧 emoji " * 300,
        "a\x00b\x00c NUL bytes",
        "\ud800 lone surrogate",
        "x\r\ny\rz\u2028w",
        "2023-01-01\n2023-01-02\n",
        "<<<>>>;;;\"\">" * 100,
        "A." * 2000,
    ],
)
def test_chunking_never_raises_and_keeps_offsets(text):
    doc = Document(doc_id="d", source="s", text=text, title="", lang="en")
    cs = chunk_document(doc, chunk_size=120, chunk_overlap=30)
    for c in cs:
        assert 0 <= c.start < c.end <= len(text)
        assert c.text == clean_span(text, c.start, c.end) and c.text
        assert len(c.text) <= 3 * 120 or c.kind == "timeline"
    if not text.strip():
        assert cs == []


def test_chunking_is_fast(seeds):
    chunk_document(seeds["000"], chunk_size=400, chunk_overlap=80)  # warm up (gazetteer build)
    t0 = time.perf_counter()
    for doc in seeds.values():
        chunk_document(doc, chunk_size=400, chunk_overlap=80)
    assert time.perf_counter() - t0 < 0.1
