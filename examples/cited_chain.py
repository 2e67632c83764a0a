"""A small LCEL chain over Qiao: retrieve passages, then format them with their citations.

Runs offline against the local index (built from the corpus directory on first use) or
against a running Qiao server::

    python examples/cited_chain.py "Which regions support stem cell clinical research?"
    python examples/cited_chain.py "干细胞临床研究" --k 3 --region 北京
    python examples/cited_chain.py "gene therapy pilot" --url http://127.0.0.1:8000

Output: each passage numbered ``[n]`` with the line that cites it (title, source file,
character span, date), ready to paste into a prompt. ``build_chain(retriever, llm=chat_model)``
shows the same chain with a chat model writing a cited answer; see ``qa/llm.py`` for the
validated version that ``/ask`` uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Make the repository importable when run as a script from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough  # noqa: E402

from qiao.integrations.langchain import QiaoRetriever, QiaoSearchError, format_citation, format_documents  # noqa: E402

PROMPT = ChatPromptTemplate.from_messages(
    [
        (
            "system",
            "Answer only from the numbered passages. After every statement put the number of the passage "
            "that supports it, like [1]. If the passages do not answer the question, say so.",
        ),
        ("human", "Passages:\n{context}\n\nQuestion: {question}"),
    ]
)


def render_evidence(inputs: dict) -> str:
    """``{"question": str, "docs": list[Document]}`` -> the question and its cited passages as text."""
    docs = inputs["docs"]
    if not docs:
        return f"Question: {inputs['question']}\n\nNo passage found."
    return f"Question: {inputs['question']}\n\n{format_documents(docs)}"


def sources_block(docs) -> str:
    """``Sources:`` then one ``[n] title — source, chars a–b, date`` line per passage."""
    return "Sources:\n" + "\n".join(f"[{n}] {format_citation(d)}" for n, d in enumerate(docs, 1))


def build_chain(retriever: QiaoRetriever, llm=None) -> Runnable:
    """A Runnable ``question (str) -> str``.

    Without ``llm``: the retrieved passages with their citations. With a LangChain chat model: the
    model's answer from those passages followed by the sources list (its ``[n]`` markers are not
    checked here; ``qa.llm`` does that for ``/ask``).
    """
    gather = RunnableParallel(question=RunnablePassthrough(), docs=retriever)
    if llm is None:
        return gather | RunnableLambda(render_evidence)
    answer = (
        RunnablePassthrough.assign(context=lambda x: format_documents(x["docs"]))
        | RunnablePassthrough.assign(answer=PROMPT | llm | StrOutputParser())
    )
    return gather | answer | RunnableLambda(lambda x: f"{x['answer'].strip()}\n\n{sources_block(x['docs'])}")


def make_retriever(args: argparse.Namespace) -> QiaoRetriever:
    filters = {"k": args.k, "mode": args.mode, "region": args.region or None, "lang": args.lang or None}
    if args.url:
        return QiaoRetriever.from_url(args.url, **filters)

    from qiao.service.core import QiaoService, collect_documents
    from qiao.settings import Settings

    settings = Settings(data_dir=Path(args.data_dir)) if args.data_dir else Settings()
    service = QiaoService(settings)
    if service.try_load() is None:  # first run: build the index from the corpus directory
        print(f"building the index under {settings.index_dir} ...", file=sys.stderr)
        service.build(collect_documents(settings).documents, progress=False)
    return QiaoRetriever.from_service(service, **filters)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("question")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--mode", choices=("hybrid", "bm25", "vector"), default="hybrid")
    p.add_argument("--region", action="append", help="filter by region (repeatable), e.g. Tianjin or 天津")
    p.add_argument("--lang", action="append", choices=("en", "zh"))
    p.add_argument("--url", help="a running Qiao server instead of the local index")
    p.add_argument("--data-dir", help="Qiao data directory (default: QIAO_DATA_DIR or .qiao)")
    args = p.parse_args(argv)
    try:
        print(build_chain(make_retriever(args)).invoke(args.question))
    except (ValueError, QiaoSearchError) as exc:  # bad filter, no index, server refused: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
