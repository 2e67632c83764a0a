"""Managed documents on disk: uploaded texts and deletions, under ``Settings.data_dir / "documents"``.

Layout::

    documents/<doc_id>.txt     the stored (extracted) text, UTF-8, byte for byte what is indexed
    documents/<doc_id>.json    {"source", "kind", "original_bytes", "original_sha256", "added_at"}
    documents/deleted.json     {"<doc_id>": {"source", "deleted_at"}}: corpus documents removed by the user
    documents/.lock            serialises writers (processes: server, ``qiao add`` / ``qiao remove``)
    documents/.tmp-*           staged files of an update in progress (removed by the next update)
    documents/.pending.json    the journal of the update in progress: what to commit, and which
                               doc_ids the new index holds / lacks

An update is staged first (files and journal), the index is rebuilt from the
would-be document set, and only when that succeeded are the staged files renamed
into place, so a failed build leaves the store exactly as it was. If the process
dies after the index switched but before the commit finished, :meth:`DocumentStore.recover`
(run at startup and before every update) finds the journal, sees that the current
index already holds the change, and rolls it forward; otherwise it rolls it back.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from qiao.corpus.extract import Extracted
from qiao.corpus.loader import DocumentError, LoadResult, document_from_text
from qiao.corpus.models import Document
from qiao.index.store import fsync_path, write_atomic

DELETED = "deleted.json"
JOURNAL = ".pending.json"


@dataclass
class StagedChange:
    """Files written aside for one update; ``commit`` makes them real, ``discard`` forgets them."""

    renames: list[tuple[Path, Path]] = field(default_factory=list)  # (staged, final)
    unlinks: list[Path] = field(default_factory=list)
    deleted: dict[str, dict] | None = None  # the new tombstone table, when it changes
    present: list[str] = field(default_factory=list)  # doc_ids the new index holds (added)
    absent: list[str] = field(default_factory=list)  # doc_ids the new index lacks (removed)

    def to_json(self) -> dict:
        return {
            "renames": [[a.name, b.name] for a, b in self.renames],
            "unlinks": [p.name for p in self.unlinks],
            "deleted": self.deleted,
            "present": self.present,
            "absent": self.absent,
        }

    @classmethod
    def from_json(cls, root: Path, data: dict) -> "StagedChange":
        return cls(
            renames=[(root / a, root / b) for a, b in data.get("renames", [])],
            unlinks=[root / n for n in data.get("unlinks", [])],
            deleted=data.get("deleted"),
            present=list(data.get("present", [])),
            absent=list(data.get("absent", [])),
        )


class DocumentStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    # --- reading ---------------------------------------------------------------

    def lock(self, timeout: float) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / ".lock"), timeout=timeout)

    def deleted(self) -> dict[str, dict]:
        """Tombstones: doc_id -> {"source", "deleted_at"} of corpus documents the user removed."""
        try:
            data = json.loads((self.root / DELETED).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise DocumentError(str(self.root / DELETED), f"unreadable list of deleted documents ({exc}); fix or remove it") from exc
        return data if isinstance(data, dict) else {}

    def uploaded(self) -> LoadResult:
        """The stored uploaded documents, oldest first; a damaged entry is reported, not fatal."""
        result = LoadResult()
        if not self.root.is_dir():
            return result
        entries = []
        for meta_path in self.root.glob("*.json"):
            if meta_path.name == DELETED or meta_path.name.startswith("."):
                continue
            doc_id = meta_path.stem
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                text = (self.root / f"{doc_id}.txt").read_bytes().decode("utf-8")
                doc = document_from_text(text, meta["source"])
            except DocumentError as exc:
                result.errors.append(exc)
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                result.errors.append(DocumentError(meta_path.name, f"damaged stored document ({type(exc).__name__}: {exc})"))
                continue
            if doc.doc_id != doc_id:
                result.errors.append(DocumentError(meta_path.name, f"stored text does not match its id (expected {doc_id}, got {doc.doc_id})"))
                continue
            entries.append((meta.get("added_at", ""), doc_id, doc))
        result.documents = [d for _, _, d in sorted(entries, key=lambda e: (e[0], e[1]))]
        return result

    def has_journal(self) -> bool:
        return (self.root / JOURNAL).is_file()

    def is_uploaded(self, doc_id: str) -> bool:
        return (self.root / f"{doc_id}.json").is_file()

    # --- staging updates -------------------------------------------------------

    def cleanup(self) -> None:
        """Remove files staged by an update that never finished. Call with the lock held."""
        if self.root.is_dir():
            for p in self.root.glob(".tmp-*"):
                p.unlink(missing_ok=True)

    def stage_add(self, items: list[tuple[Document, Extracted]]) -> StagedChange:
        """Write the texts and metadata of new documents aside; un-delete any that were tombstoned."""
        self.root.mkdir(parents=True, exist_ok=True)
        change = StagedChange()
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for doc, ex in items:
            meta = {
                "doc_id": doc.doc_id,
                "source": doc.source,
                "kind": ex.kind,
                "original_bytes": ex.original_bytes,
                "original_sha256": ex.original_sha256,
                "added_at": now,
            }
            # the text first, the metadata (which makes the document visible) last
            for name, data in ((f"{doc.doc_id}.txt", doc.text.encode("utf-8")),
                               (f"{doc.doc_id}.json", json.dumps(meta, ensure_ascii=False, indent=1).encode("utf-8"))):
                staged = self.root / f".tmp-{name}"
                write_atomic(staged, data)
                change.renames.append((staged, self.root / name))
        tomb = self.deleted()
        if any(doc.doc_id in tomb for doc, _ in items):
            change.deleted = {k: v for k, v in tomb.items() if k not in {d.doc_id for d, _ in items}}
        change.present = [doc.doc_id for doc, _ in items]
        self._write_journal(change)
        return change

    def stage_remove(self, doc: Document, from_corpus: bool) -> StagedChange:
        """Forget an uploaded document and/or tombstone a corpus document."""
        change = StagedChange()
        if self.is_uploaded(doc.doc_id):
            # metadata first: without it the text file is invisible
            change.unlinks += [self.root / f"{doc.doc_id}.json", self.root / f"{doc.doc_id}.txt"]
        if from_corpus:
            tomb = self.deleted()
            tomb[doc.doc_id] = {"source": doc.source, "deleted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            change.deleted = tomb
        change.absent = [doc.doc_id]
        self._write_journal(change)
        return change

    def _write_journal(self, change: StagedChange) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / JOURNAL, json.dumps(change.to_json(), ensure_ascii=False).encode("utf-8"))

    def commit(self, change: StagedChange) -> None:
        """Apply a staged change; safe to run again on a half-applied one (recovery does)."""
        for staged, final in change.renames:
            if staged.exists() or not final.exists():
                os.replace(staged, final)
        if change.deleted is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomic(self.root / DELETED, json.dumps(change.deleted, ensure_ascii=False, indent=1).encode("utf-8"))
        for p in change.unlinks:
            p.unlink(missing_ok=True)
        if self.root.is_dir():
            fsync_path(self.root)
        (self.root / JOURNAL).unlink(missing_ok=True)  # last: until here, recovery can finish the job

    def discard(self, change: StagedChange) -> None:
        for staged, _ in change.renames:
            staged.unlink(missing_ok=True)
        (self.root / JOURNAL).unlink(missing_ok=True)

    def recover(self, index_doc_ids: set[str] | None) -> str | None:
        """Finish or undo an update that a crash interrupted. Call with the lock held.

        ``index_doc_ids``: the doc_ids of the index now current (None when there is none).
        The change is rolled forward when that index already reflects it, else rolled back.
        Returns "forward", "back" or None (no interrupted update).
        """
        path = self.root / JOURNAL
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            change = StagedChange.from_json(self.root, data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, AttributeError):
            path.unlink(missing_ok=True)  # unreadable: written atomically, so this is not ours; staged files go
            return "back"
        ids = index_doc_ids
        applied = ids is not None and all(d in ids for d in change.present) and not any(d in ids for d in change.absent)
        if applied and all(s.exists() or f.exists() for s, f in change.renames):
            self.commit(change)
            return "forward"
        self.discard(change)
        return "back"
