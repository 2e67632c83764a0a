"""Optional language-model answers: a chat model writes the answer from the selected evidence.

Off unless ``settings.llm_base_url`` and ``settings.llm_model`` are both set (``QIAO_LLM_BASE_URL``,
``QIAO_LLM_MODEL``); the extractive answer stays the default everywhere.

Flow (``maybe_llm_answer``): the extractive answer's citations are numbered evidence ``[1]..[n]``;
the model (LangChain ``ChatOpenAI`` against any OpenAI-compatible endpoint) is told to answer from
them only and to cite every statement with ``[n]``. Its text then goes through
:func:`validate_cited_text`, which

* cuts any sources/references section the model appended (Qiao lists sources itself),
* removes markers that point to no citation (``[7]`` when there are 3, ``[0]``),
* drops every statement left without a valid marker (an uncited claim is not evidence-backed),

and the answer is rebuilt with only the citations the kept text uses, renumbered 1..m in order of
first use. If nothing valid remains, or the model fails or times out, the extractive answer is
returned unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable

from qiao.config import LLMConfig
from qiao.corpus.lang import detect_lang
from qiao.settings import Settings

log = logging.getLogger("qiao.llm")

# [1]  [1, 2]  [1][2]  【1】 (full-width brackets, as Chinese models often write them)
_MARKER_RE = re.compile(r"\s?[\[【]\s*(\d{1,3}(?:\s*[,，、]\s*\d{1,3})*)\s*[\]】]")
_MARKERS = r"(?:\s*[\[【]\s*\d{1,3}(?:\s*[,，、]\s*\d{1,3})*\s*[\]】])*"
# A statement ends at . ! ? ; followed by space or end, at Chinese end punctuation, or at a line
# break, and takes the markers written right after its punctuation ("... 2023. [1]") with it.
_BOUNDARY_RE = re.compile(r"(?:[.!?;](?=\s|$|[\[【])|[。！？；]|\n)" + _MARKERS)
_ABBREV_RE = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|No|Art|Nos|approx|Fig|Dr|Mr|Ms|St|Inc|Ltd|Co)\.|\b[A-Z]\.)$")
_SOURCES_HEAD_RE = re.compile(
    r"^\s*(?:#+\s*|\*\*)?(?:sources|references|citations|evidence|参考(?:资料|來源|来源|文献)?|来源|來源|出处|出處|引用)"
    r"\s*(?:\*\*)?\s*[:：]?\s*(?:\*\*)?\s*$",
    re.I | re.M,
)
_CJK_END_RE = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]$")
_CJK_START_RE = re.compile(r"^[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]")


@dataclass
class ValidatedText:
    """What survived validation.

    ``text``: the kept statements with only valid markers, normalised to ``[n]`` (one id per
    bracket); ``cited``: valid ids in order of first use; ``dropped``: statements removed for
    having no valid marker; ``removed_markers``: ids removed because no citation has them.
    """

    text: str
    cited: list[int]
    dropped: list[str] = field(default_factory=list)
    removed_markers: list[int] = field(default_factory=list)


def _statements(text: str) -> list[tuple[str, str]]:
    """``[(gap_before, statement)]``: statements stripped, with the whitespace between each and the previous one."""
    raw: list[str] = []
    pos = 0
    pending = ""
    for m in _BOUNDARY_RE.finditer(text):
        seg = text[pos : m.end()]
        pos = m.end()
        if _ABBREV_RE.search(seg.rstrip()) and not _MARKER_RE.search(seg):
            pending += seg  # "e.g." is not the end of a statement
            continue
        raw.append(pending + seg)
        pending = ""
    raw.append(pending + text[pos:])
    out: list[tuple[str, str]] = []
    trailing = ""
    for seg in raw:
        body = seg.strip()
        lead = seg[: len(seg) - len(seg.lstrip())]
        if body:
            out.append((trailing + lead, body))
            trailing = seg[len(seg.rstrip()) :]
        else:
            trailing += seg
    return out


def _join(parts: list[tuple[str, str]]) -> str:
    out = ""
    for gap, s in parts:
        if not out:
            out = s
        elif "\n\n" in gap:
            out += "\n\n" + s
        elif "\n" in gap:
            out += "\n" + s
        elif _CJK_END_RE.search(out) and _CJK_START_RE.search(s):
            out += s
        else:
            out += " " + s
    return out


def strip_sources_section(text: str) -> str:
    """``text`` without a trailing "Sources:" / "References:" / "来源：" section the model may add."""
    m = _SOURCES_HEAD_RE.search(text)
    return text[: m.start()].rstrip() if m else text


def validate_cited_text(text: str, valid_ids: Iterable[int]) -> ValidatedText | None:
    """Keep the statements of ``text`` that cite at least one id in ``valid_ids``.

    Invalid markers are removed from every statement; statements left without a valid marker
    are dropped. Returns ``None`` when no statement survives (the caller then falls back).
    """
    valid = set(valid_ids)
    kept: list[tuple[str, str]] = []
    cited: dict[int, None] = {}
    dropped: list[str] = []
    removed: list[int] = []
    for gap, stmt in _statements(strip_sources_section(text or "")):
        ids_here: list[int] = []

        def rewrite(m: re.Match, ids_here: list[int] = ids_here) -> str:
            ids = [int(x) for x in re.split(r"\s*[,，、]\s*", m.group(1))]
            good = [i for i in dict.fromkeys(ids) if i in valid]
            removed.extend(i for i in ids if i not in valid)
            ids_here.extend(good)
            lead = m.group(0)[0] if m.group(0)[0].isspace() else ""
            return lead + "".join(f"[{i}]" for i in good) if good else ""

        new = _MARKER_RE.sub(rewrite, stmt).strip()
        if not ids_here:
            dropped.append(stmt)
            continue
        new = re.sub(r"\s+([.!?;,。！？；，])", r"\1", new)  # "text [9]." -> "text." when [9] went
        kept.append((gap, new))
        cited.update(dict.fromkeys(ids_here))
    if not kept:
        return None
    return ValidatedText(text=_join(kept), cited=list(cited), dropped=dropped, removed_markers=removed)


def renumber_markers(text: str, mapping: dict[int, int]) -> str:
    """Rewrite ``[old]`` markers to ``[mapping[old]]`` (markers must already be normalised)."""
    return re.sub(r"\[(\d+)\]", lambda m: f"[{mapping.get(int(m.group(1)), int(m.group(1)))}]", text)


# --- the model -------------------------------------------------------------------------------------

SYSTEM_PROMPT = (
    "You answer questions about Chinese cell and gene therapy policy using ONLY the numbered evidence "
    "passages given. Rules:\n"
    "1. Every sentence must end with the number(s) of the passage(s) that support it, in square brackets, "
    "e.g. [1] or [2][3]. Use only numbers that appear in the evidence.\n"
    "2. Do not state anything the passages do not say. If they do not answer the question, say that in one "
    "sentence citing the closest passage.\n"
    "3. Be concise: at most five sentences. Do not add a list of sources or references.\n"
    "4. Answer in {language}."
)


def evidence_block(citations: list) -> str:
    """``[id] (title, source, date) quote`` lines for the prompt, one per citation."""
    lines = []
    for c in citations:
        meta = ", ".join(str(x) for x in (_get(c, "title"), _get(c, "source"), _get(c, "date")) if x)
        quote = " ".join(str(_get(c, "quote") or "").split())
        lines.append(f"[{_get(c, 'id')}] ({meta}) {quote}")
    return "\n".join(lines)


def _get(obj: Any, name: str, default=None):
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def _llm_config(config: LLMConfig | Settings) -> LLMConfig:
    return config if isinstance(config, LLMConfig) else LLMConfig.of(config)


def llm_enabled(config: LLMConfig | Settings) -> bool:
    return _llm_config(config).enabled


@lru_cache(maxsize=4)
def _chat_model(base_url: str, model: str, api_key: str | None, timeout: float):
    from langchain_openai import ChatOpenAI  # optional dependency: pip install 'qiao[llm]'

    return ChatOpenAI(
        base_url=base_url, model=model, api_key=api_key or "not-needed", timeout=timeout, temperature=0, max_retries=1
    )


def make_chat_model(config: LLMConfig | Settings):
    """``ChatOpenAI`` for ``settings.llm_*`` (cached per configuration)."""
    c = _llm_config(config)
    assert c.base_url and c.model, "make_chat_model needs QIAO_LLM_BASE_URL and QIAO_LLM_MODEL"
    return _chat_model(c.base_url, c.model, c.api_key, float(c.timeout))


def write_answer(question: str, citations: list, llm) -> str:
    """Ask chat model ``llm`` (any LangChain chat model) for a cited answer; returns its raw text."""
    from langchain_core.messages import HumanMessage, SystemMessage

    language = "Chinese" if detect_lang(question) == "zh" else "English"
    messages = [
        SystemMessage(SYSTEM_PROMPT.format(language=language)),
        HumanMessage(f"Evidence:\n{evidence_block(citations)}\n\nQuestion: {question}"),
    ]
    out = llm.invoke(messages)
    content = out.content if hasattr(out, "content") else out
    if isinstance(content, list):  # content blocks
        content = "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return str(content)


def _replace(obj: Any, **changes):
    if isinstance(obj, dict):
        return {**obj, **changes}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{k: v for k, v in changes.items() if k in {f.name for f in dataclasses.fields(obj)}})
    for k, v in changes.items():
        setattr(obj, k, v)
    return obj


def llm_answer(answer, question: str, llm):
    """``answer`` rewritten by ``llm`` from its own citations, validated; ``answer`` itself on fallback."""
    citations = list(_get(answer, "citations") or [])
    if not citations or not _get(answer, "answerable", True):
        return answer  # nothing to write from: the extractive "not found" stands
    raw = write_answer(question, citations, llm)
    checked = validate_cited_text(raw, [_get(c, "id") for c in citations])
    if checked is None:
        log.info("LLM answer had no statement with a valid citation; keeping the extractive answer")
        return answer
    if checked.dropped or checked.removed_markers:
        log.info("LLM answer: dropped %d statement(s), removed markers %s", len(checked.dropped), checked.removed_markers)
    mapping = {old: new for new, old in enumerate(checked.cited, 1)}
    by_id = {_get(c, "id"): c for c in citations}
    new_citations = [_replace(by_id[old], id=new) for old, new in mapping.items()]
    return _replace(answer, answer=renumber_markers(checked.text, mapping), citations=new_citations, generator="llm")


def maybe_llm_answer(answer, settings: LLMConfig | Settings, question: str | None = None, llm=None):
    """The hook ``/ask`` calls last: an LLM-written, validated answer when ``settings.llm_*`` are set.

    ``llm`` overrides the configured model (tests pass LangChain's fake chat models). Any failure
    of the model (unreachable, timeout, bad output) keeps the extractive ``answer``.
    """
    if llm is None and not llm_enabled(settings):
        return answer
    question = question if question is not None else _get(answer, "question", "")
    try:
        return llm_answer(answer, question or "", llm if llm is not None else make_chat_model(settings))
    except Exception as exc:  # noqa: BLE001 - the extractive answer is always a valid reply
        log.warning("LLM answer failed (%s: %s); keeping the extractive answer", type(exc).__name__, exc)
        return answer
