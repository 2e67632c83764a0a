"""The ``qiao`` command line: index, search, serve (and the commands of later layers).

Errors print one line on stderr and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

from qiao.errors import Invalid, QiaoError, check_doc_ids
from qiao.settings import Settings


class CLIError(Invalid):
    """A usage mistake found by the CLI itself. Like every :class:`QiaoError` it is printed as one
    ``qiao: error:`` line and exits with :attr:`QiaoError.exit_code` (2)."""

    code = "usage"


def _settings(args) -> Settings:
    overrides = {}
    if getattr(args, "corpus", None):
        overrides["corpus_dir"] = Path(args.corpus)
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:  # a bad QIAO_* variable: name it on one line
        first = exc.errors()[0]
        name = "QIAO_" + "_".join(str(p) for p in first["loc"]).upper()
        raise CLIError(f"invalid setting {name}={first.get('input')!r}: {first['msg']}") from None


def _service(args):
    from qiao.service.core import QiaoService

    return QiaoService(_settings(args))


def _loaded_service(args):
    service = _service(args)
    service.load()  # IndexLoadError (a QiaoError) says to run `qiao index`
    return service


def cmd_index(args) -> int:
    service = _service(args)
    corpus_dir = Path(service.settings.corpus_dir)
    if not corpus_dir.is_dir():
        raise CLIError(f"corpus directory {corpus_dir} does not exist or is not a directory")
    from qiao.corpus.loader import DocumentError

    try:
        service.recover()  # finish (or undo) a document update a crash interrupted, before reading the documents
    except (OSError, DocumentError):
        pass  # reported by the next update; the index is built from the store as it is
    with _writer_lock(service):
        if not service.store.has_journal():
            service.store.cleanup()  # staged files of an update that never reached its journal
        return _index_locked(args, service, corpus_dir)


@contextmanager
def _writer_lock(service, timeout: float = 600):
    """Hold the document store's lock from reading the documents to switching the index, so an
    upload or `qiao add` / `qiao remove` in another process cannot slip in between and be lost."""
    from filelock import Timeout

    lock = service.store.lock(timeout)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print("waiting for another update of the index to finish ...", file=sys.stderr)
        try:
            lock.acquire()
        except Timeout:
            raise CLIError(f"another process is still updating the index after {timeout:.0f}s; try again later") from None
    try:
        yield
    finally:
        lock.release()


def _index_locked(args, service, corpus_dir: Path) -> int:
    from qiao.service.core import collect_documents

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

    from qiao.api.schemas import SearchFilters, SearchRequest, too_long

    filters = _validated(SearchFilters, lang=args.lang, region=args.region, date_from=args.date_from, date_to=args.date_to, doc_id=args.doc_id)
    req = _validated(SearchRequest, query=args.query, k=args.k, mode=args.mode, filters=filters)
    if msg := too_long(req.query, "query", _settings(args).max_query_chars):
        raise CLIError(msg)
    service = _loaded_service(args)
    snap = service.snapshot
    check_doc_ids(snap.index.documents, req.filters.doc_id)
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
    # before any engine loads libgomp: an OpenMP team that spin-waits lost 10-50x on a busy machine
    # (a short query: 3.0 s p50 with 2 spinning threads vs 55-75 ms passive; index/pool.py)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import uvicorn

    from qiao.api.app import create_app

    from qiao.service.core import QiaoService

    settings = _settings(args)
    host = args.host or settings.host
    port = args.port or settings.port
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be at least 1, not {args.workers}")
    workers = args.workers or settings.server_workers
    if workers > 1:
        return _serve_processes(args, settings, host, port, workers)
    service = QiaoService(settings)

    class Server(uvicorn.Server):
        """On SIGTERM / SIGINT: cancel a running update at once (it rolls back within one build slice and
        its request is answered 503), then uvicorn's graceful shutdown, bounded by QIAO_SHUTDOWN_TIMEOUT_S."""

        def handle_exit(self, sig, frame) -> None:
            service.begin_shutdown()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        create_app(settings, service), host=host, port=port, log_level="info", access_log=False,  # one JSON line per request: qiao.api.logging_mw
        timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout_s)),
    )
    Server(config).run()
    return 0


def _serve_processes(args, settings: Settings, host: str, port: int, workers: int) -> int:
    """``workers`` server processes on one port (uvicorn's supervisor): each loads the index and runs
    ``cores / workers`` embedding engines (unless QIAO_EMBED_WORKERS says otherwise), so the GIL-bound
    Python of a request (routing, JSON, BM25 analysis, fusion) runs on every core; an index switched by one
    process is picked up by the others at their next request (``QiaoService.refresh``). On SIGTERM each
    process finishes its requests (bounded by QIAO_SHUTDOWN_TIMEOUT_S) and stops its engines."""
    import uvicorn

    from qiao.index.pool import usable_cores

    os.environ["QIAO_SERVER_WORKERS"] = "1"  # the children are the workers
    for name, value in (("QIAO_DATA_DIR", getattr(args, "data_dir", None)), ("QIAO_CORPUS_DIR", getattr(args, "corpus", None))):
        if value:
            os.environ[name] = str(Path(value).resolve())
    if not settings.embed_workers:
        os.environ["QIAO_EMBED_WORKERS"] = str(max(1, usable_cores() // workers))
    uvicorn.run(
        "qiao.api.cli:worker_app", factory=True, host=host, port=port, workers=workers, log_level="info",
        access_log=False, timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout_s)),
    )
    return 0


def worker_app():
    """The app of one server process of ``qiao serve --workers N`` (settings from the environment).

    Like the single-process server, SIGTERM / SIGINT first cancel a running update (it rolls back, its request gets
    a 503) and then let uvicorn shut down: uvicorn installs its own signal handlers in each worker before the
    application starts, so they are chained at the lifespan's start (main thread)."""
    import signal

    from qiao.api.app import create_app
    from qiao.service.core import QiaoService

    settings = Settings()
    service = QiaoService(settings)
    app = create_app(settings, service)
    previous: dict = {}

    def on_signal(sig, frame) -> None:
        service.begin_shutdown()
        handler = previous.get(sig)
        if callable(handler):
            handler(sig, frame)

    async def chained(scope, receive, send):
        if scope["type"] == "lifespan" and not previous:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.getsignal(sig)
                signal.signal(sig, on_signal)
        await app(scope, receive, send)

    return chained


def cmd_mcp(args) -> int:
    """Serve the MCP tools (search, ask) and document resources on stdin/stdout."""
    from qiao.integrations.mcp_server import run_stdio

    run_stdio(_loaded_service(args))
    return 0


@contextmanager
def _nothing_changed():
    """A failed add / remove changed nothing: say so after the service's message."""
    from qiao.errors import UnknownDocument

    try:
        yield
    except UnknownDocument:
        raise
    except QiaoError as exc:
        raise CLIError(f"{exc}; nothing was changed") from None


def cmd_add(args) -> int:
    files = []
    for name in args.files:
        path = Path(name)
        if path.exists() and not path.is_file() and not path.is_dir():  # a FIFO would block forever
            raise CLIError(f"{name}: not a regular file (a pipe, socket or device)")
        try:
            files.append((path.name, path.read_bytes()))
        except FileNotFoundError:
            raise CLIError(f"{name}: file not found") from None
        except IsADirectoryError:
            raise CLIError(f"{name}: is a directory, give files") from None
        except OSError as exc:
            raise CLIError(f"{name}: cannot read ({exc.strerror or exc})") from None
    service = _service(args)
    limit = service.settings.max_upload_bytes
    for (_name, data), arg in zip(files, args.files):
        if len(data) > limit:
            raise CLIError(f"{arg}: {len(data)} bytes is over the upload limit of {limit} bytes (QIAO_MAX_UPLOAD_BYTES)")
    with _nothing_changed():
        report = service.add_documents(files, progress=not args.quiet)
    for d in report.documents:
        print(f"added {d['source']} as {d['doc_id']} ({d['chunks']} chunks, {d['lang']}, {d['title'][:60]!r})")
    print(f"index: {report.total_documents} documents, {report.total_chunks} chunks ({report.build.embedded} passages embedded)")
    return 0


def cmd_remove(args) -> int:
    service = _service(args)
    with _nothing_changed():
        report = service.remove_document(args.doc_id)
    d = report.documents[0]
    print(f"removed {d['doc_id']} ({d['source']}, {d['chunks']} chunks)")
    print(f"index: {report.total_documents} documents, {report.total_chunks} chunks")
    return 0


def _ask_filters(args):
    from qiao.api.schemas import SearchFilters

    return _validated(
        SearchFilters, lang=args.lang, region=args.region, date_from=args.date_from, date_to=args.date_to, doc_id=args.doc_id
    )


def cmd_ask(args) -> int:
    from qiao.api.schemas import AskRequest
    from qiao.qa.pipeline import engine_for

    from qiao.api.schemas import too_long

    req = _validated(AskRequest, question=args.question, k=args.k, filters=_ask_filters(args))
    if msg := too_long(req.question, "question", _settings(args).max_query_chars):
        raise CLIError(msg)
    service = _loaded_service(args)
    snap = service.snapshot
    check_doc_ids(snap.index.documents, req.filters.doc_id)
    answer = engine_for(snap, service.settings).ask(req.question, k=req.k, filters=req.filters.to_filters())
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2))
        return 0
    print(answer.answer)
    if answer.citations:
        print()
        for c in answer.citations:
            quote = " ".join(c.quote.split())
            print(f"[{c.id}] {c.source}  {c.date or '-'}  [{c.start}:{c.end}]")
            print(textwrap.indent(textwrap.fill(quote, 100), "    "))
    elif answer.hits:
        print("\nnearest passages:")
        for h in answer.hits[:3]:
            _print_hit(h.to_dict())
    return 0


def cmd_eval_qa(args) -> int:
    if args.openqa:
        return _eval_openqa(args)
    from qiao.qa.evaluate import DEFAULT_QUESTIONS, format_table, load_questions, run_eval
    from qiao.qa.pipeline import engine_for

    path = Path(args.questions) if args.questions else DEFAULT_QUESTIONS
    try:
        questions = load_questions(path)
    except FileNotFoundError:
        raise CLIError(f"{path}: file not found") from None
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if not questions:
        raise CLIError(f"{path}: no questions")
    service = _loaded_service(args)
    engine = engine_for(service.snapshot, service.settings)
    engine.warm()  # latency is reported on warm caches
    results, report = run_eval(engine, questions, k=args.k)
    if args.json:
        print(json.dumps({"report": report, "results": [r.to_dict() for r in results]}, ensure_ascii=False, indent=2))
        return 0
    print(f"{len(results)} questions from {path}, k={args.k}, abstention threshold {report['threshold']}")
    print(format_table(report["summary"]))
    lat, lat2, cal = report["latency_ms"], report["latency_ms_query_cached"], report["calibration"]
    print(
        f"latency: mean {lat['mean']} ms, p95 {lat['p95']} ms (question vector cached: mean {lat2['mean']} ms, "
        f"p95 {lat2['p95']} ms); every marker has a citation: {report['markers_ok']}"
    )
    print(
        f"calibration: best threshold {cal['threshold']} (accuracy {cal['accuracy']}); answerable min "
        f"{cal['answerable']['min']} / median {cal['answerable']['median']}, unanswerable max "
        f"{cal['unanswerable']['max']} / median {cal['unanswerable']['median']}"
    )
    if args.verbose:
        for r in results:
            flag = "ok " if r.abstention_ok and (r.answer_hit in (None, 1.0)) and (r.list_recall in (None, 1.0)) else "ERR"
            print(f"{flag} {r.q.id} {r.answer.evidence_score:.3f} {r.q.question[:70]}  missing={r.missing_items}")
    return 0


def _eval_openqa(args) -> int:
    """``qiao eval-qa --openqa DIR``: every question of an openqa-format set through the /ask code path,
    scored by the set's own score.py (qiao/eval/openqa.py)."""
    from qiao.api.routes_ask import answer_response
    from qiao.eval.openqa import check_dir, format_breakdown, run_openqa
    from qiao.service.core import QiaoService

    path = Path(args.openqa)
    try:
        check_dir(path)
    except QiaoError as exc:
        raise CLIError(str(exc)) from None
    settings = _settings(args)
    overrides = {"corpus_dir": path / "corpus"}
    if not args.data_dir and "QIAO_DATA_DIR" not in os.environ:  # never replace the default index with this corpus
        overrides["data_dir"] = settings.data_dir / "eval" / f"openqa-{path.resolve().name}"
    settings = settings.model_copy(update=overrides)
    service = QiaoService(settings)
    out = Path(args.out) if args.out else settings.data_dir / "openqa-responses.jsonl"
    log = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr))
    run = run_openqa(service, path, out, answer_response, k=args.k, limit=args.limit, log=log, every=args.every)
    if args.json:
        print(json.dumps({"score": run.score_text, "breakdown": run.breakdown, "results": run.records}, ensure_ascii=False, indent=2))
        return 0
    print(f"responses: {run.out_path}; index: {settings.index_dir}; abstention threshold {settings.qa_min_evidence}")
    print(run.score_text.rstrip())
    print()
    print(format_breakdown(run.breakdown))
    from qiao.qa.evaluate import calibrate

    cal = calibrate([(r["evidence_score"], r["answerable"]) for r in run.records])
    print(f"calibration on this set: best threshold {cal['threshold']} (abstention accuracy {cal['accuracy']}, "
          f"{cal['false_abstentions']} answerable below it, {cal['false_answers']} unanswerable above it)")
    if args.verbose:
        for r in run.records:
            flag = "ok " if (r.get("first") if r["answerable"] else r["abst"]) else "ERR"
            print(f"{flag} {r['id']} {r['qtype']:<8} {r['evidence_score']:.3f} abst={r['abst']} cited={r.get('cited')}")
    return 0


def cmd_eval(args) -> int:
    """Retrieval evaluation on BEIR datasets (eval/run.py): metrics per mode, table / JSON / report."""
    try:
        import ir_measures  # noqa: F401
        if args.report:
            import matplotlib  # noqa: F401
    except ImportError as exc:
        raise CLIError(f"qiao eval needs the 'eval' extra ({exc.name} is missing): pip install 'qiao[eval]'") from None
    from qiao.eval.entry import run_retrieval_eval

    settings = _settings(args)
    progress = not args.quiet and not args.json and sys.stderr.isatty()
    log = (lambda s: None) if args.json or args.quiet else (lambda s: print(s, file=sys.stderr))
    run = run_retrieval_eval(
        args.dataset, settings, args.mode, split=args.split, sample=args.sample, e2e_sample=args.latency_sample,
        rebuild=args.rebuild, report_dir=Path(args.report) if args.report else None,
        command="qiao " + " ".join(sys.argv[1:]), progress=progress, log=log,
    )
    print(run.to_json(args.per_query) if args.json else run.text())
    return 0


def add_filter_args(s: argparse.ArgumentParser) -> None:
    """The /search filters, and --json, as options (search and ask share them)."""
    s.add_argument("--lang", action="append", help="en or zh (repeatable)")
    s.add_argument("--region", action="append", help="region name in English or Chinese (repeatable)")
    s.add_argument("--date-from", help="YYYY-MM-DD, inclusive")
    s.add_argument("--date-to", help="YYYY-MM-DD, inclusive")
    s.add_argument("--doc-id", action="append", help="restrict to these documents (repeatable)")
    s.add_argument("--json", action="store_true", help="print the API's JSON")


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
    add_filter_args(s)
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("serve", help="serve the API and web page")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int, help="server processes on the port (default: QIAO_SERVER_WORKERS, 1)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("mcp", help="serve the MCP tools (search, ask) and document resources over stdio")
    s.set_defaults(func=cmd_mcp)

    s = sub.add_parser("add", help="add documents (.txt, .md, .html, .pdf) and update the index")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.add_argument("--corpus", help="corpus directory the index also holds (default: corpus/documents)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_add)

    s = sub.add_parser("remove", help="remove a document by doc_id and update the index")
    s.add_argument("doc_id")
    s.add_argument("--corpus", help="corpus directory the index also holds (default: corpus/documents)")
    s.set_defaults(func=cmd_remove)

    s = sub.add_parser("ask", help="answer a question with exact citations")
    s.add_argument("question")
    s.add_argument("--k", type=int, default=8, help="evidence chunks (default 8)")
    add_filter_args(s)
    s.set_defaults(func=cmd_ask)

    s = sub.add_parser("eval-qa", help="score answers on the QA evaluation questions")
    s.add_argument("--questions", help="JSONL file (default: eval/questions/seed_qa.jsonl)")
    s.add_argument("--k", type=int, default=8)
    s.add_argument("--json", action="store_true", help="full report and per-question results as JSON")
    s.add_argument("--verbose", action="store_true", help="one line per question")
    s.add_argument("--openqa", metavar="DIR",
                   help="an openqa-format set (corpus/, questions.jsonl, score.py): index DIR/corpus in the data dir "
                   "(default <data dir>/eval/openqa-NAME unless --data-dir / QIAO_DATA_DIR), answer through /ask, run score.py")
    s.add_argument("--out", help="with --openqa: where to write the {id, response} JSONL (default: in the data dir)")
    s.add_argument("--limit", type=int, help="with --openqa: the first N questions only")
    s.add_argument("--every", type=int, default=1, help="with --openqa: every N-th question (a sample stratified by set)")
    s.set_defaults(func=cmd_eval_qa)
    s = sub.add_parser("eval", help="retrieval evaluation on a BEIR dataset (nDCG@10, recall, MRR, latency per mode)")
    s.add_argument("--dataset", action="append", required=True, metavar="DIR",
                   help="BEIR directory: corpus.jsonl, queries.jsonl, qrels/<split>.tsv (repeatable)")
    s.add_argument("--mode", action="append", help="bm25, vector or hybrid (repeatable; default: all three)")
    s.add_argument("--split", default="test", help="qrels file name under qrels/ (default: test)")
    s.add_argument("--sample", type=int, help="evaluate a fixed seeded sample of N queries (default: all)")
    s.add_argument("--latency-sample", type=int, default=100,
                   help="queries also timed through search() with the query embedded (default 100; 0: skip)")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    s.add_argument("--per-query", action="store_true", help="with --json: include per-query metrics")
    s.add_argument("--report", metavar="DIR", help="write report.md, modes.png and results.json to DIR")
    s.add_argument("--rebuild", action="store_true", help="rebuild the eval index even if one exists")
    s.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    s.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except QiaoError as exc:  # the one CLI mapping of the error family: one line, its exit code
        print(f"qiao: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("qiao: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        if args.debug:
            raise
        print(f"qiao: error: {_one_line(exc)} (run with --debug for details)", file=sys.stderr)
        return 1


def _one_line(exc: Exception) -> str:
    """An unexpected exception as one line: file-system errors name the path, others their type."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return " ".join(f"{type(exc).__name__}: {exc}".split())


if __name__ == "__main__":
    sys.exit(main())
