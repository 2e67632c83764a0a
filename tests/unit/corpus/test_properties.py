"""Property tests of the text pipeline (hypothesis): for any Unicode text, chunking and the
analysers never raise, chunk offsets are exact, and chunks cover the non-noise text.

The generated texts mix what real uploads contain (English and Chinese prose, timeline date
lines, headings, scraped-page noise) with what they should not (NUL and other control
characters, lone surrogates, combining marks, emoji, odd line breaks, very long lines, no
line breaks at all).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qiao.corpus.chunking import chunk_document, sentence_spans
from qiao.corpus.cleaning import clean_span, clean_text, noise_spans
from qiao.corpus.gazetteer import find_region_mentions, find_regions, resolve_region
from qiao.corpus.lang import detect_lang
from qiao.corpus.loader import DocumentError, doc_id_for_bytes, document_from_text
from qiao.corpus.metadata import extract_metadata, is_date_line, parse_date
from qiao.corpus.models import Document
from qiao.index.analysers import match_keys, normalize, to_simplified, tokenize
from qiao.index.glossary import bridge_terms, expand_query

# Fast enough for `make test` (~20 s for the whole module on 2 cores); `make soak` has a longer run.
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- strategies ----------------------------------------------------------------------------

FRAGMENTS = [
    # prose, English and Chinese (Simplified and Traditional)
    "The Ministry issued the Measures on stem cell clinical research. ",
    "Dr. Li said the U.S. FDA approved 3.5 mg/kg on Jan. 5, e.g. for CAR-T trials! ",
    "天津市发布了干细胞临床研究管理办法。", "博鰲樂城國際醫療旅遊先行區允許使用。", "深圳市人大常委会：",
    "“细胞治疗”产品（试行）；", "Shenzhen, Guangdong Province", "At the national level", "北京市",
    # timeline date lines
    "2023-07-27", "2021年5月1日", "May 5, 2023", "July 2019", "（2022年3月）",
    # scraped-page noise
    "IMG_256IMG_257", "[图片]", "Return to List", "Prve: Next article title", "下一篇：某某通知",
    '<span style="font-size: 12px;">', "</p>", "&nbsp;", 'font-size: inherit; vertical-align: baseline;">',
    "baseline;”>", "【打印本页】【关闭窗口】", "<!-- comment -->",
    # odd characters
    "\x00", "\x01\x02\x1f\x7f", "\ufeff", "\u200b", "e\u0301\u0308", "\u0915\u094d\u0937", "🧬🇨🇳👩‍🔬",
    "\ud800", "\udfff", "\U0002a6a5", "ＣＡＲ－Ｔ", "\u00ad", "…", "。。。", "!!!", "...", "a.m.", "No. 5",
    # line breaks of every kind, and blanks
    "\n", "\r\n", "\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\n\n\n", "   ", "\t", "\u3000", "\u00a0",
]

_any_char = st.characters(codec=None, categories=None)  # every code point, lone surrogates included


@st.composite
def messy_text(draw) -> str:
    parts = draw(
        st.lists(
            st.one_of(
                st.sampled_from(FRAGMENTS),
                st.text(alphabet=_any_char, max_size=30),
                # a long run without any break (no newline, no sentence end)
                st.builds(lambda c, n: c * n, st.sampled_from(["a", "细", "x ", "é", "🧬", "，"]), st.integers(200, 3000)),
            ),
            max_size=40,
        )
    )
    return "".join(parts)


def _doc(text: str) -> Document:
    return Document(doc_id="0" * 16, source="fuzz.txt", text=text, title="fuzz", lang=detect_lang(text))


def _line_spans(text: str):
    return [m.span() for m in re.finditer(r"[^\r\n\u2028\u2029\x85]+", text)]


def _check_chunks(text: str, size: int, overlap: int) -> None:
    chunks = chunk_document(_doc(text), chunk_size=size, chunk_overlap=overlap)
    noise = noise_spans(text)
    covered = bytearray(len(text))
    headings = {c.heading for c in chunks if c.heading}
    prev_start = -1
    for i, c in enumerate(chunks):
        assert c.chunk_id == f"{'0' * 16}:{i:04d}"
        assert 0 <= c.start < c.end <= len(text)
        span = text[c.start : c.end]
        # the chunk's text is its source span with noise removed, nothing invented
        assert c.text == clean_span(text, c.start, c.end)
        assert c.text, "an empty chunk was emitted"
        assert not span[0].isspace() and not span[-1].isspace()
        assert c.kind in ("prose", "timeline") and c.lang in ("en", "zh")
        assert c.start >= prev_start, "chunks are not in document order"
        prev_start = c.start
        covered[c.start : c.end] = b"\x01" * (c.end - c.start)
    for s, e in noise:
        covered[s:e] = b"\x01" * (e - s)
    # every visible character is in a chunk, or on a heading line (headings travel as Chunk.heading)
    for ls, le in _line_spans(text):
        missing = [i for i in range(ls, le) if not covered[i] and not text[i].isspace()]
        if missing:
            assert clean_span(text, ls, le) in headings, (
                f"text at {missing[0]} not covered by any chunk: {text[ls:le][:80]!r}"
            )


@FAST
@given(text=messy_text(), size=st.integers(50, 800), overlap=st.integers(0, 400))
@example(text="", size=400, overlap=80)
@example(text="\x00" * 10, size=50, overlap=0)
@example(text="a" * 5000, size=50, overlap=49)
@example(text="细" * 5000, size=50, overlap=80)
@example(text="2023-07-27\n北京市\n2021年5月1日\nShenzhen\n\n2020-01-01\nx", size=50, overlap=10)
@example(text="\ud800\n2023-07-27\n\ud800\n2023-07-28\nIMG_1", size=400, overlap=80)
def test_chunking_is_exact_and_complete(text, size, overlap):
    _check_chunks(text, size, overlap)


@FAST
@given(text=st.text(alphabet=_any_char, max_size=400), size=st.integers(50, 200))
def test_chunking_of_arbitrary_code_points(text, size):
    _check_chunks(text, size, size // 5)


@FAST
@given(text=messy_text(), a=st.integers(-5, 6000), b=st.integers(-5, 6000))
def test_sentences_and_noise_spans_are_in_bounds(text, a, b):
    for s, e in sentence_spans(text, a, b):
        assert 0 <= s < e <= len(text)
        assert not text[s].isspace() and not text[e - 1].isspace()
    whole = noise_spans(text)
    assert whole == sorted(whole)
    assert all(s < e for s, e in whole)
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(whole, whole[1:]))
    # a window's noise is the whole text's noise clipped to it (what lets clean_span agree with the chunker)
    lo, hi = sorted((min(max(a, 0), len(text)), min(max(b, 0), len(text))))
    clipped = [(max(s, lo), min(e, hi)) for s, e in whole if e > lo and s < hi]
    assert noise_spans(text, lo, hi) == clipped
    assert isinstance(clean_span(text, a, b), str)


@FAST
@given(text=messy_text())
def test_analysers_never_raise(text):
    toks = tokenize(text)
    assert all(isinstance(t, str) and t and not any(ch.isspace() for ch in t) for t in toks)
    assert tokenize(text) == toks  # deterministic
    assert isinstance(match_keys(text), list)
    assert isinstance(normalize(text), str)
    assert isinstance(to_simplified(text), str)
    assert all(isinstance(t, str) for t in expand_query(text))
    assert isinstance(bridge_terms(text), list)
    assert detect_lang(text) in ("en", "zh")
    for s, e, key in find_region_mentions(text):
        assert 0 <= s < e <= len(text) and resolve_region(key) == key
    assert isinstance(find_regions(text), list)
    resolve_region(text[:100])
    for line in text.splitlines()[:50]:
        is_date_line(line)
        parse_date(line)
    meta = extract_metadata(text, "fuzz.txt")
    assert meta["title"] and meta["lang"] in ("en", "zh")
    assert isinstance(clean_text(text), str)


@FAST
@given(text=messy_text())
def test_uploaded_text_becomes_a_document_or_a_clear_error(text):
    """document_from_text (the upload path) either gives a chunkable Document or a DocumentError."""
    try:
        doc = document_from_text(text, "upload.txt")
    except DocumentError as exc:
        assert exc.source == "upload.txt" and exc.reason
        return
    assert doc.doc_id == doc_id_for_bytes(text.encode("utf-8", "surrogatepass"))
    assert doc.text == text
    for c in chunk_document(doc, 200, 40):
        assert c.text == clean_span(text, c.start, c.end)


@pytest.mark.soak
@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=messy_text(), size=st.integers(50, 800), overlap=st.integers(0, 400))
def test_chunking_long_run(text, size, overlap):
    _check_chunks(text, size, overlap)
    tokenize(text)
