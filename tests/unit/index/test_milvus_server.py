"""QIAO_MILVUS_URI pointing at a Milvus *server* (http://host:port), with credentials.

The server is milvus-lite's own gRPC server (the Milvus protocol, served by ``milvus_lite``) on a
loopback port, behind the check a Milvus server with ``common.security.authorizationEnabled``
runs before every call: the ``authorization`` metadata must be base64 of the token
(``user:password`` or an API key), otherwise the call fails with gRPC ``UNAUTHENTICATED`` and
Milvus' message. milvus-lite itself has no users, so this interceptor is the only stand-in here;
everything else (pymilvus over the network, the server's collections) is the real thing.
"""

from __future__ import annotations

import base64
from concurrent import futures

import grpc
import pytest

from qiao.index.embedders import EmbeddingCache
from qiao.index.milvus_backend import MilvusError, _clients
from qiao.index.store import current_build
from qiao.service.core import QiaoService, collect_documents
from qiao.settings import Settings

TOKEN = "root:Milvus-right"


class _RequireToken(grpc.ServerInterceptor):
    """Milvus' authentication: a call without the right ``authorization`` metadata is refused."""

    def __init__(self, token: str):
        self.expected = base64.b64encode(token.encode()).decode()

    def intercept_service(self, continuation, details):
        got = dict(details.invocation_metadata).get("authorization")
        if got == self.expected:
            return continuation(details)

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "auth check failure, please check username and password are correct")

        return grpc.unary_unary_rpc_method_handler(refuse)


@pytest.fixture()
def milvus_server(tmp_path):
    from milvus_lite.adapter.grpc.servicer import MilvusServicer
    from milvus_lite.db import MilvusLite
    from pymilvus.grpc_gen import milvus_pb2_grpc

    db = MilvusLite(str(tmp_path / "server-data"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[_RequireToken(TOKEN)])
    milvus_pb2_grpc.add_MilvusServiceServicer_to_server(MilvusServicer(db), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    uri = f"http://127.0.0.1:{port}"
    yield uri
    for key in [k for k in _clients if k[0] == uri]:
        _clients.pop(key).close()
    server.stop(grace=1)
    db.close()


def _service(tmp_path, shared_cache_dir, uri: str, token: str | None, name: str = "data") -> QiaoService:
    settings = Settings(data_dir=tmp_path / name, backend="milvus", milvus_uri=uri, milvus_token=token, milvus_timeout=5)
    service = QiaoService(settings)
    service.embedder.cache = EmbeddingCache(shared_cache_dir / "embeddings.sqlite")
    if service.embedder.second is not None:
        service.embedder.second.cache = service.embedder.cache
    return service


def test_wrong_or_missing_token_is_one_line_and_nothing_is_written(tmp_path, shared_cache_dir, milvus_server):
    for token in ("root:wrong", None):
        service = _service(tmp_path, shared_cache_dir, milvus_server, token)
        docs = collect_documents(service.settings).documents[:2]
        with pytest.raises(MilvusError) as err:
            service.build(docs, progress=False)
        msg = str(err.value)
        assert "\n" not in msg and "refused the credentials" in msg and "QIAO_MILVUS_TOKEN" in msg
        assert TOKEN not in msg  # the credentials never end up in a message or a log line
        assert current_build(service.settings.index_dir) is None  # no catalog switched
    # and nothing reached the server: with the right token it holds no collection
    good = _service(tmp_path, shared_cache_dir, milvus_server, TOKEN, "good")
    from qiao.index.milvus_backend import connect

    assert connect(good.settings).list_collections() == []


def test_the_right_token_builds_and_a_second_replica_reads_the_same_collection(tmp_path, shared_cache_dir, milvus_server):
    service = _service(tmp_path, shared_cache_dir, milvus_server, TOKEN)
    docs = collect_documents(service.settings).documents[:2]
    report = service.build(docs, progress=False)
    assert report.chunks > 0
    hits = service.snapshot.retriever.search("stem cell clinical research", k=3)
    assert hits and {h.chunk.doc_id for h in hits} <= {d.doc_id for d in docs}
    # another Qiao process with the same index directory (a shared volume) and the same server:
    # the same rows, the same hits
    replica = QiaoService(service.settings.model_copy())
    replica.embedder.cache = service.embedder.cache
    other = replica.load().retriever.search("stem cell clinical research", k=3)
    assert [(h.chunk.chunk_id, round(h.score, 4)) for h in other] == [(h.chunk.chunk_id, round(h.score, 4)) for h in hits]
