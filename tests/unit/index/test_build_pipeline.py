"""The build pipeline (index/store.py ``analyse_and_embed``): with an engine that embeds in worker processes the
BM25 analysis and the second embedder run beside it, and the results are exactly the serial ones."""

from __future__ import annotations

import threading

import numpy as np

from qiao.corpus.loader import document_from_text
from qiao.index.store import analyse_and_embed, bm25_text, chunk_documents
from qiao.index.analysers import tokenize_many
from qiao.settings import Settings


class _Engine:
    """A deterministic embedder (vectors from the text's hash); ``out_of_process`` like the torch runtime's."""

    def __init__(self, dim: int, out_of_process: bool, wait_for: threading.Event | None = None,
                 signal: threading.Event | None = None):
        self.dim, self.model_id, self.last_embedded = dim, f"fake-{dim}", 0
        self.out_of_process = out_of_process
        self.wait_for, self.signal = wait_for, signal
        self.threads: set[str] = set()

    def embed_passages(self, texts, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        if self.signal is not None:
            self.signal.set()
        if self.wait_for is not None:
            self.wait_for.wait(20)  # the other embedder's start, seen while this one is still "embedding"
        self.last_embedded = len(texts)
        rng = [np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(self.dim) for t in texts]
        return np.asarray(rng, np.float32).reshape(len(texts), self.dim)


def _chunks():
    docs = [
        document_from_text(text, f"d{i}.txt")
        for i, text in enumerate([
            "天津市人大常委会通过了促进基因和细胞产业发展条例，支持细胞治疗临床研究先行先试。" * 3,
            "Hainan's Boao pilot zone may use cell and gene therapies approved abroad. " * 4,
            "臺灣的幹細胞臨床試驗與細胞治療產業發展，衛福部公告特管辦法。",
        ])
    ]
    return chunk_documents(docs, 350, 40)


def test_out_of_process_engine_runs_beside_analysis_and_second_embedder():
    chunks = _chunks()
    second_started = threading.Event()
    first = _Engine(8, out_of_process=True, wait_for=second_started)
    second = _Engine(4, out_of_process=False, signal=second_started)
    tokens, vectors, vectors2 = analyse_and_embed(first, second, chunks, Settings(), progress=False)
    assert second_started.is_set() and first.wait_for is second_started
    assert second.threads and not (second.threads & first.threads)  # the second embedder ran in another thread
    # same output as the serial path
    serial_first, serial_second = _Engine(8, out_of_process=False), _Engine(4, out_of_process=False)
    t2, v2, w2 = analyse_and_embed(serial_first, serial_second, chunks, Settings(), progress=False)
    assert tokens == t2 == tokenize_many([bm25_text(c) for c in chunks])
    assert np.array_equal(vectors, v2) and np.array_equal(vectors2, w2)
    assert vectors.shape == (len(chunks), 8) and vectors2.shape == (len(chunks), 4)


def test_in_process_engine_stays_serial():
    chunks = _chunks()
    first, second = _Engine(8, out_of_process=False), _Engine(4, out_of_process=False)
    tokens, vectors, vectors2 = analyse_and_embed(first, second, chunks, Settings(), progress=False)
    assert first.threads == second.threads == {threading.current_thread().name}
    assert len(tokens) == len(chunks) and vectors2 is not None


def test_no_second_embedder():
    chunks = _chunks()
    tokens, vectors, vectors2 = analyse_and_embed(_Engine(8, out_of_process=True), None, chunks, Settings(), progress=False)
    assert vectors2 is None and vectors.shape == (len(chunks), 8) and len(tokens) == len(chunks)
