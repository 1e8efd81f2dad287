"""Index directories owned by a retriever: reuse only on a matching manifest, build atomically.

``IndexedRetriever`` holds the flow every such retriever needs, so a plugin writes only how to index, save
and load its own files. The directory holds those files plus ``manifest.json`` (whatever ``manifest``
returns: retriever, settings, document count, content fingerprint). It is reused only when the manifest
matches and the files load; it is built in a temporary sibling directory renamed into place, so a crash
never leaves a half index that a later run trusts.
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


class IndexedRetriever:
    """Base class: subclasses implement ``manifest``, ``index``, ``save`` and ``load``."""

    name = "indexed"
    index_files: tuple[str, ...] = ()  # files whose absence means there is no index yet

    def __init__(self) -> None:
        self.documents: list[Document] = []

    def manifest(self, documents: Sequence[Document]) -> dict[str, Any]:
        """Everything that changes the index: a different value means a rebuild."""
        raise NotImplementedError

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
        except (OSError, json.JSONDecodeError):
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
            manifest = {**expected, "rqa_version": __version__}
            write_directory_atomically(Path(index_dir), lambda staging: self._save_with(staging, manifest))
        return True

    def _save_with(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.save(directory)
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))  # last: it vouches for the rest


def write_directory_atomically(target: Path, fill: Any) -> None:
    """Fill a temporary sibling directory with ``fill(path)``, then rename it to ``target``.

    An existing ``target`` is moved aside first (a directory cannot be replaced in one rename) and removed
    once the new one is in place; leftovers of a crash in between are cleared on the next write.
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
