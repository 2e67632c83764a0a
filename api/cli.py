"""The ``qiao`` command line: index, search, serve (and the commands of later layers).

Errors print one line on stderr and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from settings import Settings


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def _settings(args) -> Settings:
    overrides = {}
    if getattr(args, "corpus", None):
        overrides["corpus_dir"] = Path(args.corpus)
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    return Settings(**overrides)


def _service(args):
    from api.service import QiaoService

    return QiaoService(_settings(args))


def _loaded_service(args):
    from index.store import IndexLoadError

    service = _service(args)
    try:
        service.load()
    except IndexLoadError as exc:
        raise CLIError(str(exc)) from None
    return service


def cmd_index(args) -> int:
    from api.service import collect_documents

    service = _service(args)
    corpus_dir = Path(service.settings.corpus_dir)
    if not corpus_dir.is_dir():
        raise CLIError(f"corpus directory {corpus_dir} does not exist or is not a directory")
    result = collect_documents(service.settings)
    for err in result.errors:
        print(f"warning: skipped {err}", file=sys.stderr)
    if not result.documents:
        raise CLIError(f"no loadable .txt or .md documents in {corpus_dir}")
    if args.if_stale:
        reason = service.stale_reason(result.documents)
        if reason is None:
            print(f"index is up to date ({len(result.documents)} documents) at {service.settings.index_dir}")
            return 0
        print(f"rebuilding index: {reason}", file=sys.stderr)
    report = service.build(result.documents, progress=not args.quiet, log=lambda s: print(s, file=sys.stderr))
    print(
        f"indexed {report.documents} documents, {report.chunks} chunks ({report.embedded} embedded, "
        f"{report.chunks - report.embedded} from cache) in {report.seconds:.1f}s -> {report.path}"
    )
    return 0


def _print_hit(h: dict) -> None:
    regions = ", ".join(h["regions"][:4]) or "-"
    print(f"{h['rank']:>2}. [{h['score']:.4f}] {h['source']}  {h['date'] or '-'}  {regions}  [{h['start']}:{h['end']}] {h['lang']}")
    snippet = " ".join(h["text"].split())
    print(textwrap.indent(textwrap.fill(snippet[:300] + ("…" if len(snippet) > 300 else ""), 100), "    "))


def _validated(model, **fields):
    from pydantic import ValidationError

    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CLIError(f"{where}: {first['msg']}") from None


def cmd_search(args) -> int:
    import time

    from api.schemas import SearchFilters, SearchRequest

    filters = _validated(SearchFilters, lang=args.lang, region=args.region, date_from=args.date_from, date_to=args.date_to, doc_id=args.doc_id)
    req = _validated(SearchRequest, query=args.query, k=args.k, mode=args.mode, filters=filters)
    service = _loaded_service(args)
    snap = service.snapshot
    for d in req.filters.doc_id or ():
        if d not in snap.index.documents:
            raise CLIError(f"unknown doc_id {d!r}")
    t0 = time.perf_counter()
    hits = [h.to_dict() for h in snap.retriever.search(req.query, k=req.k, mode=req.mode, filters=req.filters.to_filters())]
    took = round((time.perf_counter() - t0) * 1000, 3)
    if args.json:
        print(json.dumps({"query": req.query, "mode": req.mode, "took_ms": took, "hits": hits}, ensure_ascii=False, indent=2))
        return 0
    if not hits:
        print("no results")
    for h in hits:
        _print_hit(h)
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from api.app import create_app

    settings = _settings(args)
    host = args.host or settings.host
    port = args.port or settings.port
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qiao", description="Qiao 桥: bilingual search and QA over your documents")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--data-dir", help="where the index and caches live (default: QIAO_DATA_DIR or ./.qiao)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("index", help="build the index from the corpus directory")
    s.add_argument("--corpus", help="directory of .txt/.md documents (default: corpus/documents)")
    s.add_argument("--if-stale", action="store_true", help="only rebuild when documents or settings changed")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("search", help="search the index")
    s.add_argument("query")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--mode", default="hybrid", help="hybrid, bm25 or vector")
    s.add_argument("--lang", action="append", help="en or zh (repeatable)")
    s.add_argument("--region", action="append", help="region name in English or Chinese (repeatable)")
    s.add_argument("--date-from")
    s.add_argument("--date-to")
    s.add_argument("--doc-id", action="append")
    s.add_argument("--json", action="store_true", help="print the API's JSON")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("serve", help="serve the API and web page")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"qiao: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qiao: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        if args.debug:
            raise
        print(f"qiao: error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
