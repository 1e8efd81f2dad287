"""Index directories owned by a retriever: reuse only on a matching manifest, build atomically.

``IndexedRetriever`` holds the flow every such retriever needs, so a plugin writes only how to index, save
and load its own files. The directory holds those files plus ``manifest.json`` (whatever ``manifest``
returns: retriever, settings, document count, content fingerprint). It is reused only when the manifest
matches and the files load; it is built in a temporary sibling directory renamed into place, so a crash
never leaves a half index that a later run trusts.

An index directory is rqa's alone: rqa replaces a directory only when it is empty or holds an index rqa
built, so pointing ``--index`` at a folder of one's own data is refused, never emptied.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from rqa import __version__
from rqa.errors import RqaError
from rqa.schema import Document

log = logging.getLogger("rqa")
Rebuild = Literal["auto", "always", "never"]
MANIFEST = "manifest.json"


class IndexMismatchError(RqaError):
    """The index on disk was built for another database or settings, and rebuilding is not allowed."""


class NotAnIndexError(RqaError):
    """The index path holds something rqa did not build; rqa neither replaces nor deletes it."""


class IndexedRetriever:
    """Base class: subclasses implement ``manifest``, ``index``, ``save`` and ``load``."""

    name = "indexed"
    index_files: tuple[str, ...] = ()  # files whose absence means there is no index yet

    def __init__(self) -> None:
        self.documents: list[Document] = []

    def manifest(self, documents: Sequence[Document]) -> dict[str, Any]:
        """Everything that changes the index: a different value means a rebuild."""
        raise NotImplementedError

    def settle_manifest(self, expected: dict[str, Any]) -> dict[str, Any]:
        """The manifest to write once ``index`` ran: ``expected``, or it with what only indexing could learn.

        A Hub model's commit, for one, may be known only once indexing downloaded the model.
        """
        return expected

    def index(self, documents: Sequence[Document], progress: bool) -> None:
        """Build the index in memory."""
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        """Write the in-memory index's files into ``directory``."""
        raise NotImplementedError

    def load(self, directory: Path, expected: dict[str, Any]) -> str | None:
        """Load the files of a matching manifest; None on success, else what is wrong with them."""
        raise NotImplementedError

    def try_load(self, index_dir: str | Path, expected: dict[str, Any]) -> str | None:
        """None when ``index_dir`` held a usable index for ``expected`` (now loaded); otherwise why not."""
        index_dir = Path(index_dir)
        manifest_path = index_dir / MANIFEST
        if not manifest_path.exists() or not all((index_dir / f).exists() for f in self.index_files):
            return "no index there yet"
        try:
            found = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            return "its manifest is unreadable"
        if not isinstance(found, dict):
            return "its manifest is unreadable"
        changed = [key for key, value in expected.items() if found.get(key) != value]
        if changed:
            return "it was built for a different " + ", ".join(changed)
        try:
            return self.load(index_dir, expected)
        except Exception:
            return "its index files are truncated or corrupt"

    def build(
        self,
        documents: Sequence[Document],
        index_dir: str | Path | None = None,
        rebuild: Rebuild = "auto",
        progress: bool = False,
    ) -> bool:
        """Load a matching index from ``index_dir`` or build one; returns True when it was built."""
        if index_dir is not None:
            check_index_dir(index_dir, self.index_files)  # before any work: never embed for a refused folder
        self.documents = list(documents)
        expected = self.manifest(self.documents)
        if index_dir is not None and rebuild != "always":
            problem = self.try_load(index_dir, expected)
            if problem is None:
                return False
            if rebuild == "never":
                raise IndexMismatchError(f"index {index_dir} cannot be reused: {problem}")
            if Path(index_dir).exists():
                log.info("rebuilding index %s: %s", index_dir, problem)
        if not self.documents:
            raise RqaError("cannot index an empty document database")
        self.index(self.documents, progress)
        if index_dir is not None:
            manifest = {**self.settle_manifest(expected), "rqa_version": __version__}
            check_index_dir(index_dir, self.index_files)  # the folder may have changed during a long build
            write_directory_atomically(Path(index_dir), lambda staging: self._save_with(staging, manifest))
        return True

    def _save_with(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.save(directory)
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))  # last: it vouches for the rest


def is_rqa_index(directory: Path, index_files: Sequence[str] = ()) -> bool:
    """Whether ``directory`` holds an index rqa built, by any retriever, matching or not.

    Its manifest is a JSON object naming a retriever or an rqa version. A damaged manifest still counts when
    the retriever's own index files sit beside it: a ``manifest.json`` alone (a web app's, say) does not.
    """
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return False
    try:
        found = json.loads(manifest.read_text())
    except (OSError, ValueError):
        found = None
    if isinstance(found, dict) and ("retriever" in found or "rqa_version" in found):
        return True
    return bool(index_files) and all((directory / name).is_file() for name in index_files)


def check_index_dir(index_dir: str | Path, index_files: Sequence[str] = ()) -> None:
    """Refuse an index path rqa may not replace: a file, or a non-empty folder that is not an rqa index.

    Building replaces the whole directory, so anything else there would be lost; a missing or empty folder
    and an index rqa built (for any retriever or settings) are fine.
    """
    path = Path(index_dir)
    advice = (
        "rqa will not replace it; point --index (or --full_dataset_index_path) at a new or empty folder, "
        "or at an index rqa built"
    )
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise NotAnIndexError(f"{index_dir} is a file, not an index folder: {advice}")
    if is_rqa_index(path, index_files):
        return
    if not any(path.iterdir()):
        return
    why = "its manifest.json is not rqa's" if (path / MANIFEST).exists() else "no manifest.json"
    raise NotAnIndexError(f"{index_dir} is not an rqa index ({why}) and is not empty: {advice}")


def write_directory_atomically(target: Path, fill: Any) -> None:
    """Fill a temporary sibling directory with ``fill(path)``, then rename it to ``target``.

    An existing ``target`` is moved aside first (a directory cannot be replaced in one rename) and removed
    once the new one is in place; leftovers of a crash in between are cleared on the next write. Callers
    check first that ``target`` may be replaced (``check_index_dir``).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        fill(staging)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, retired / "index")
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
