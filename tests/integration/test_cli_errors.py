"""The CLI under bad input: unreadable paths, empty directories, corrupt or foreign indexes, bad
settings. Every failure is one ``qiao: error: ...`` line on stderr and a non-zero exit, never a
traceback (``--debug`` shows one); a damaged index is repaired by ``qiao index``.

Library-level detection of corrupt files is in test_index.py; here it is the user's view.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from qiao.api.cli import main
from qiao.index.store import current_build
from qiao.settings import PROJECT_ROOT

SEED_DIR = PROJECT_ROOT / "corpus" / "documents"


# --- helpers -------------------------------------------------------------------------------


def assert_one_line_error(rc: int, err: str, *needles: str) -> str:
    """A non-zero exit whose stderr is warnings plus exactly one final ``qiao: error:`` line."""
    assert rc != 0, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    errors = [ln for ln in lines if ln.startswith("qiao: error:")]
    assert errors == [lines[-1]], err
    assert all(ln.startswith(("warning:", "qiao: error:", "rebuilding index:")) for ln in lines), err
    for n in needles:
        assert n.lower() in errors[0].lower(), errors[0]
    return errors[0]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


PACKAGE_DIRS = ("qiao", "corpus", "index", "retriever", "qa", "service", "api", "eval")


def run_cli(*argv: str, timeout: float = 120, user: int | None = None, root: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    """``qiao`` in a child process (the real entry point, with a timeout against hangs), from the
    checkout ``root`` (for ``user``: a copy that user can read, see :func:`readable_checkout`)."""
    cmd = [sys.executable, "-m", "qiao.api.cli", *argv]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(root)}
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def readable_checkout(dest: Path, user: int) -> Path:
    """A world-readable copy of the code under ``dest`` for a CLI run as ``user``: the checkout itself may
    sit in a 0700 directory (``mktemp -d``, a CI workspace) that this user cannot enter. Skips the test,
    saying why, when the interpreter or its packages are not readable by ``user`` either."""
    root = dest / "checkout"
    for name in PACKAGE_DIRS:
        shutil.copytree(PROJECT_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".qiao"))
    for p in [dest, *dest.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    probe = run_cli("--help", user=user, root=root, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"user {user} cannot run {sys.executable} with Qiao's dependencies (its virtualenv is not "
                    f"readable to others?): {probe.stderr.strip().splitlines()[-1:] or probe.returncode}")
    return root


def copy_seed_data(seed_service, shared_cache_dir: Path, dest: Path) -> Path:
    """A data dir holding a copy of the seed index and of the embedding cache (so rebuilds embed nothing)."""
    dest.mkdir(parents=True, exist_ok=True)
    build = current_build(seed_service.settings.index_dir)
    (dest / "index" / "builds").mkdir(parents=True)
    shutil.copytree(build, dest / "index" / "builds" / build.name)
    os.symlink(os.path.join("builds", build.name), dest / "index" / "current")
    (dest / "cache").mkdir()
    src = sqlite3.connect(shared_cache_dir / "embeddings.sqlite")
    dst = sqlite3.connect(dest / "cache" / "embeddings.sqlite")
    with dst:
        src.backup(dst)
    src.close(), dst.close()
    return dest


@pytest.fixture()
def seed_data(seed_service, shared_cache_dir, tmp_path) -> Path:
    return copy_seed_data(seed_service, shared_cache_dir, tmp_path / "data")


def build_dir(data: Path) -> Path:
    return current_build(data / "index")


# --- qiao index on bad corpus paths ---------------------------------------------------------


def _empty(tmp: Path) -> Path:
    d = tmp / "empty"
    d.mkdir()
    return d


def _unsupported_only(tmp: Path) -> Path:
    d = tmp / "other"
    d.mkdir()
    (d / "policy.docx").write_bytes(b"PK\x03\x04")
    (d / "notes.csv").write_text("a,b\n")
    (d / ".hidden.txt").write_text("hidden files are not documents\n")
    return d


def _bad_files_only(tmp: Path) -> Path:
    d = tmp / "bad"
    d.mkdir()
    (d / "binary.txt").write_bytes(b"\x7fELF\x00\x00\x01")
    (d / "latin1.txt").write_bytes("Caf\xe9 policy\n".encode("latin-1"))
    (d / "utf16.txt").write_bytes("policy".encode("utf-16"))
    (d / "blank.md").write_text(" \n\t\n")
    (d / "dir.txt").mkdir()
    os.symlink(tmp / "nowhere.txt", d / "dangling.txt")
    return d


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda t: t / "missing", "does not exist"),
        (lambda t: (t / "file.txt").write_text("x") and t / "file.txt", "not a directory"),
        (_empty, "no loadable"),
        (_unsupported_only, "no loadable"),
        (_bad_files_only, "no loadable"),
    ],
    ids=["missing", "a-file", "empty", "unsupported-only", "bad-files-only"],
)
def test_index_with_no_usable_corpus_is_one_line(capsys, tmp_path, make, needle):
    corpus = make(tmp_path)
    rc, out, err = cli(capsys, "--data-dir", str(tmp_path / "data"), "index", "--corpus", str(corpus), "--quiet")
    assert rc == 2
    assert_one_line_error(rc, err, needle)
    assert not (tmp_path / "data" / "index" / "current").exists()  # nothing half-built left behind


def test_bad_files_are_named_and_the_good_ones_indexed(capsys, tmp_path, shared_cache_dir):
    corpus = _bad_files_only(tmp_path)
    shutil.copy(next(SEED_DIR.glob("000_*.txt")), corpus / "good.txt")
    data = tmp_path / "data"
    rc, out, err = cli(capsys, "--data-dir", str(data), "index", "--corpus", str(corpus), "--quiet")
    assert rc == 0, err
    assert "indexed 1 documents" in out
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: skipped")]
    named = {w.split("skipped ")[1].split(":")[0].split(" (")[0] for w in warnings}
    assert named == {"binary.txt", "latin1.txt", "utf16.txt", "blank.md", "dangling.txt"}, err
    assert "Traceback" not in err


def test_fifo_and_device_files_do_not_hang(tmp_path):
    """A named pipe called *.txt used to block `qiao index` (and `qiao add`) forever."""
    corpus = tmp_path / "fifo"
    corpus.mkdir()
    os.mkfifo(corpus / "pipe.txt")
    os.symlink("/dev/zero", corpus / "zero.txt")
    r = run_cli("--data-dir", str(tmp_path / "data"), "index", "--corpus", str(corpus), "--quiet", timeout=60)
    line = assert_one_line_error(r.returncode, r.stderr, "no loadable")
    assert "pipe.txt: not a regular file" in r.stderr and "zero.txt: not a regular file" in r.stderr, line
    r = run_cli("--data-dir", str(tmp_path / "data"), "add", str(corpus / "pipe.txt"), timeout=60)
    assert_one_line_error(r.returncode, r.stderr, "pipe.txt", "not a regular file")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to run the CLI as an unprivileged user")
def test_unreadable_paths_as_an_unprivileged_user(seed_service, shared_cache_dir):
    """Permission errors (files, the corpus directory, the index) are named, one line each."""
    tmp = Path(tempfile.mkdtemp(prefix="qiao-perm-"))
    try:
        os.chmod(tmp, 0o777)
        code = readable_checkout(tmp / "code", user=65534)
        corpus = tmp / "corpus"
        corpus.mkdir()
        (corpus / "secret.txt").write_text("Hainan stem cell catalogue.\n")
        os.chmod(corpus / "secret.txt", 0)
        data = tmp / "data"
        data.mkdir(mode=0o777)
        os.chmod(data, 0o777)
        r = run_cli("--data-dir", str(data), "index", "--corpus", str(corpus), "--quiet", user=65534, root=code)
        assert_one_line_error(r.returncode, r.stderr, "no loadable")
        assert "secret.txt: cannot read file: Permission denied" in r.stderr
        os.chmod(corpus, 0)
        r = run_cli("--data-dir", str(data), "index", "--corpus", str(corpus), "--quiet", user=65534, root=code)
        assert_one_line_error(r.returncode, r.stderr)
        # an index the user may not read: a clear refusal, not a crash
        copy_seed_data(seed_service, shared_cache_dir, tmp / "ro")
        for p in [tmp / "ro", *(tmp / "ro").rglob("*")]:
            if not p.is_symlink():
                os.chmod(p, 0o777 if p.is_dir() else 0o666)
        os.chmod(build_dir(tmp / "ro"), 0)
        r = run_cli("--data-dir", str(tmp / "ro"), "search", "stem cell", user=65534, root=code)
        assert_one_line_error(r.returncode, r.stderr, "permission denied")
    finally:
        for p in [tmp, *tmp.rglob("*")]:
            if not p.is_symlink():
                os.chmod(p, 0o777)
        shutil.rmtree(tmp, ignore_errors=True)


# --- bad settings and data dirs ---------------------------------------------------------------


def test_bad_environment_setting_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("QIAO_CHUNK_SIZE", "lots")
    rc, out, err = cli(capsys, "--data-dir", str(tmp_path), "index", "--quiet")
    assert rc == 2
    assert_one_line_error(rc, err, "QIAO_CHUNK_SIZE", "lots")
    monkeypatch.setenv("QIAO_CHUNK_SIZE", "10")  # below the allowed minimum
    rc, out, err = cli(capsys, "--data-dir", str(tmp_path), "search", "x")
    assert_one_line_error(rc, err, "QIAO_CHUNK_SIZE", "50")


def test_data_dir_that_is_a_file(capsys, tmp_path):
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    rc, out, err = cli(capsys, "--data-dir", str(f), "index", "--quiet")
    assert_one_line_error(rc, err, str(f))
    # --debug shows the traceback instead
    with pytest.raises(OSError):
        main(["--debug", "--data-dir", str(f), "index", "--quiet"])


@pytest.mark.parametrize(
    "args, needle",
    [
        (["search", "   "], "empty"),
        (["search", "x" * 2001], "limit"),
        (["search", "stem cell", "--k", "0"], "k"),
        (["search", "stem cell", "--mode", "fuzzy"], "mode"),
        (["search", "stem cell", "--date-from", "2023-02-30"], "date"),
        (["search", "stem cell", "--date-from", "2024-01-01", "--date-to", "2023-01-01"], "after"),
        (["search", "stem cell", "--region", "Atlantis"], "unknown region"),
        (["search", "stem cell", "--doc-id", "ffffffffffffffff"], "unknown doc_id"),
        (["remove", "ffffffffffffffff"], "unknown doc_id"),
    ],
)
def test_bad_search_arguments_are_one_line(capsys, seed_data, args, needle):
    rc, out, err = cli(capsys, "--data-dir", str(seed_data), *args)
    assert rc == 2
    assert_one_line_error(rc, err, needle)


def test_search_without_an_index(capsys, tmp_path):
    rc, out, err = cli(capsys, "--data-dir", str(tmp_path), "search", "stem cell")
    assert_one_line_error(rc, err, "no index", "qiao index")


# --- corrupt and foreign indexes ---------------------------------------------------------------


def _truncate_faiss(b: Path) -> None:
    with open(b / "vectors.faiss", "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)


def _flip_chunk_byte(b: Path) -> None:
    data = bytearray((b / "chunks.jsonl").read_bytes())
    data[len(data) // 2] ^= 0x20
    (b / "chunks.jsonl").write_bytes(bytes(data))


def _edit_manifest(fn):
    def edit(b: Path) -> None:
        m = json.loads((b / "manifest.json").read_text())
        fn(m)
        (b / "manifest.json").write_text(json.dumps(m))

    return edit


def _drop_bm25(b: Path) -> None:
    for p in (b / "bm25").iterdir():
        if p.suffix == ".npy":
            p.unlink()


CORRUPTIONS = {
    "truncated-faiss": (_truncate_faiss, "truncated"),
    "flipped-byte": (_flip_chunk_byte, "checksum"),
    "missing-bm25-arrays": (_drop_bm25, "missing"),
    "manifest-fewer-chunks": (_edit_manifest(lambda m: m.update(chunks=m["chunks"] - 1)), "inconsistent"),
    "manifest-wrong-sha": (_edit_manifest(lambda m: m["files"]["documents.jsonl"].update(sha256="0" * 64)), "checksum"),
    "manifest-no-files": (_edit_manifest(lambda m: m.pop("files")), "does not list"),
    "manifest-other-version": (_edit_manifest(lambda m: m.update(schema_version=0)), "schema version"),
    "manifest-newer-version": (_edit_manifest(lambda m: m.update(schema_version=99)), "schema version"),
    "manifest-other-embedder": (_edit_manifest(lambda m: m["embedder"].update(model_id="st/other-model")), "embedder"),
    "manifest-not-json": (lambda b: (b / "manifest.json").write_bytes(b"{\"schema_version\": 1,"), "unreadable"),
    "manifest-not-utf8": (lambda b: (b / "manifest.json").write_bytes(b"\xff\xfe\x00garbage"), "unreadable"),
    "manifest-a-list": (lambda b: (b / "manifest.json").write_text("[1, 2]"), "unreadable"),
    "manifest-missing": (lambda b: (b / "manifest.json").unlink(), "no manifest"),
    "build-dir-gone": (lambda b: shutil.rmtree(b), "no index"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_index_is_refused_then_repaired(capsys, seed_data, name):
    damage, needle = CORRUPTIONS[name]
    damage(build_dir(seed_data) or os.path.realpath(seed_data / "index" / "current"))
    rc, out, err = cli(capsys, "--data-dir", str(seed_data), "search", "stem cell", "--json")
    assert rc == 2 and out == ""  # no results at all rather than wrong ones
    assert_one_line_error(rc, err, needle, "qiao index")
    # `qiao index --if-stale` (what `make run` does) notices the damage and rebuilds
    rc, out, err = cli(capsys, "--data-dir", str(seed_data), "index", "--if-stale", "--quiet")
    assert rc == 0, err
    assert "indexed 5 documents" in out and "0 embedded" in out, out
    rc, out, err = cli(capsys, "--data-dir", str(seed_data), "search", "stem cell", "--json", "--k", "3")
    assert rc == 0, err
    assert len(json.loads(out)["hits"]) == 3


def test_corrupt_embedding_cache_is_moved_aside(capsys, seed_data):
    cache = seed_data / "cache" / "embeddings.sqlite"
    cache.write_bytes(os.urandom(4096))
    with pytest.warns(UserWarning, match="embedding cache"):
        rc, out, err = cli(capsys, "--data-dir", str(seed_data), "search", "stem cell", "--json", "--k", "2")
    assert rc == 0, err
    assert len(json.loads(out)["hits"]) == 2
    assert list((seed_data / "cache").glob("embeddings.sqlite.corrupt-*"))


def test_stray_files_in_the_index_dir_are_not_loaded(capsys, seed_data):
    """Leftovers of a crashed build (a half-written .tmp- build, a dangling link temporary) are ignored
    by readers and removed by the next build."""
    builds = seed_data / "index" / "builds"
    half = builds / ".tmp-20990101T000000-deadbeef"
    shutil.copytree(build_dir(seed_data), half)
    (half / "manifest.json").unlink()
    os.symlink(os.path.join("builds", half.name), seed_data / "index" / ".current-20990101T000000-deadbeef")
    rc, out, err = cli(capsys, "--data-dir", str(seed_data), "search", "stem cell", "--json", "--k", "1")
    assert rc == 0, err
    rc, out, err = cli(capsys, "--data-dir", str(seed_data), "index", "--quiet")
    assert rc == 0, err
    assert not list(builds.glob(".tmp-*")) and not list((seed_data / "index").glob(".current-*"))
