"""The unit-vector table (index/units.py): keys by text, reuse of a previous build, float16 bound, damage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qiao.index.units import UnitVectors, UnitVectorsError, check, unit_keys


class CountingEmbedder:
    """Deterministic pseudo-random unit vectors per text; counts the texts it is asked to embed."""

    def __init__(self, model_id: str = "test/units", dim: int = 48):
        self.model_id, self.dim = model_id, dim
        self.asked: list[str] = []

    def vector(self, text: str) -> np.ndarray:
        rng = np.random.default_rng(int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little") + len(text))
        v = rng.standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def embed_passages(self, texts, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        self.asked.extend(texts)
        return np.stack([self.vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


TEXTS = ["天津 2023-07-27\n天津市通过了细胞和基因产业促进条例。", "Beijing supports stem cell clinical research.", "alpha beta gamma delta",
         "alpha beta gamma delta", "第四个单位的文本内容"]


def test_lookup_by_text_dedup_and_float16_bound(tmp_path):
    emb = CountingEmbedder()
    table, asked = UnitVectors.build(TEXTS, {"primary": emb})
    assert asked == {"primary": 4} and table.size == 4  # the repeated text is embedded and stored once
    vecs, found = table.lookup([TEXTS[1], "a text the build never saw", TEXTS[0]], "primary")
    assert found.tolist() == [True, False, True]
    assert vecs.dtype == np.float32 and not vecs[1].any()
    for got, text in ((vecs[0], TEXTS[1]), (vecs[2], TEXTS[0])):
        exact = emb.vector(text)
        q = emb.vector("question " + text)
        # float16 storage: each component within 2^-11 of itself, so any cosine moves by <= 2^-11
        assert np.all(np.abs(got - exact) <= np.abs(exact) * 2**-11 + 1e-7)
        assert abs(float(got @ q) - float(exact @ q)) <= 2**-11

    section = table.save(tmp_path)
    loaded = UnitVectors.load(tmp_path, json.loads(json.dumps(section)))
    v2, f2 = loaded.lookup(TEXTS, "primary")
    assert f2.all()
    np.testing.assert_array_equal(v2[2], v2[3])
    np.testing.assert_array_equal(v2[:2], table.lookup(TEXTS[:2], "primary")[0])


def test_previous_build_is_reused_only_for_the_same_model():
    emb = CountingEmbedder()
    first, _ = UnitVectors.build(TEXTS[:3], {"primary": emb})
    emb.asked.clear()
    second, asked = UnitVectors.build(TEXTS[1:], {"primary": emb}, previous=first)
    assert emb.asked == ["第四个单位的文本内容"] and asked == {"primary": 1}  # only the new unit
    v, f = second.lookup(TEXTS[1:], "primary")
    assert f.all()
    np.testing.assert_array_equal(v[0], first.lookup([TEXTS[1]], "primary")[0][0])
    other = CountingEmbedder(model_id="test/other-model")
    _, asked = UnitVectors.build(TEXTS[1:], {"primary": other}, previous=first)
    assert asked == {"primary": 3}  # vectors of another model are never reused


def test_keys_sharing_their_first_half_are_told_apart():
    keys = unit_keys(["x", "y", "z"])
    keys[1, 0] = keys[0, 0] = keys[2, 0]  # force equal first halves
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    table = UnitVectors(keys[order], {"primary": np.eye(3, dtype=np.float16)[order]}, {"primary": "m"})
    rows = table.rows_of(keys)
    assert sorted(rows.tolist()) == [0, 1, 2]
    for i in range(3):
        np.testing.assert_array_equal(table.vectors["primary"][rows[i]], np.eye(3, dtype=np.float16)[i])


@pytest.mark.parametrize("damage, message", [
    ("flip", "checksum"), ("truncate", "truncated"), ("missing", "missing"), ("unsorted", "sorted"), ("shape", "expected"),
])
def test_damaged_files_are_detected(tmp_path, damage, message):
    table, _ = UnitVectors.build(TEXTS, {"primary": CountingEmbedder(), "second": CountingEmbedder("test/second", 16)})
    section = table.save(tmp_path)
    manifest = {"units": section}
    assert check(tmp_path, manifest) is None
    p = tmp_path / "units" / "primary.npy"
    if damage == "flip":
        data = bytearray(p.read_bytes())
        data[-3] ^= 0x40
        p.write_bytes(bytes(data))
    elif damage == "truncate":
        p.write_bytes(p.read_bytes()[:-10])
    elif damage == "missing":
        (tmp_path / "units" / "second.npy").unlink()
    elif damage == "unsorted":  # consistent checksums, wrong content: caught by the structure check
        keys = np.load(tmp_path / "units" / "keys.npy")
        np.save(tmp_path / "units" / "keys.npy", keys[::-1].copy())
        from qiao.index.units import _sha256

        section["files"]["units/keys.npy"]["sha256"] = _sha256(tmp_path / "units" / "keys.npy")
    elif damage == "shape":
        section["kinds"]["primary"]["dim"] = 47
    reason = check(tmp_path, manifest)
    assert reason is not None and message in reason
    with pytest.raises(UnitVectorsError, match=message):
        UnitVectors.load(tmp_path, section)
