"""Identifying an embedding model by content, for index manifests.

Retrained weights saved at the same path must never reuse vectors of the old ones, so a manifest records what
the model's files hold, not only their path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("rqa")

_SMALL_FILE = 1 << 20  # read whole on every call: cheaper than a cache lookup
_RACY_SECONDS = 2.0  # a digest is remembered only for files last changed longer ago than this
_CHUNK = 1 << 20


def model_fingerprint(name_or_path: str) -> str:
    """What identifies a model's vectors: ``sha256:…`` of a local folder's content, ``hub:id@commit`` for a Hub id.

    A local folder hashes the full content of the files sentence-transformers reads (``model_files``), so
    weights retrained at the same path always change it, whatever their size and time stamps, and a copy
    elsewhere keeps it. Sampling (size, times, first and last MiB) would miss a rewrite that keeps size and
    times (a fine-tune of middle layers copied with ``cp -p``). Full hashing runs at about 1 GB/s, so each
    digest of a file over 1 MiB is remembered in rqa's cache (``file-digests.json``) keyed by device, inode,
    size, modification and change time: a large model is read once per version, and a reuse check costs a
    few ``stat`` calls. No tool can set the change time back, so a rewrite in place always misses the memory;
    files changed in the last two seconds are not remembered, so a write in the same time-stamp tick cannot
    hide either.

    A Hub id is identified by the commit its cached ``refs/main`` names, read offline and with the
    ``sentence-transformers/`` prefix for bare names, as sentence-transformers resolves them; a model never
    downloaded has only its id, and the build that downloads it records the commit (``settle_manifest``).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return "sha256:" + _directory_digest(path)
    commit = hub_commit(name_or_path)
    return f"hub:{commit}" if commit else f"hub:{name_or_path}"


def hub_commit(repo_id: str) -> str | None:
    """``id@commit`` of a Hub model in the local cache (``$SENTENCE_TRANSFORMERS_HOME`` or the Hub's), or None."""
    from huggingface_hub import constants

    cache = Path(os.environ.get("SENTENCE_TRANSFORMERS_HOME") or constants.HF_HUB_CACHE).expanduser()
    candidates = [repo_id] if "/" in repo_id else [f"sentence-transformers/{repo_id}", repo_id]
    for candidate in candidates:
        repo = cache / ("models--" + candidate.replace("/", "--"))
        try:
            commit = (repo / "refs" / "main").read_text().strip()
        except OSError:
            continue
        if commit and (repo / "snapshots" / commit).is_dir():
            return f"{candidate}@{commit}"
    return None


def model_files(directory: Path) -> list[Path]:
    """The files that make a sentence-transformers model: the folder's own files and its modules' folders.

    Subfolders that ``modules.json`` does not name (checkpoints, evaluation output, ONNX exports) are not
    read by the model, and hashing them would only cost time; hidden files and folders are skipped too.
    """
    roots = []
    try:
        modules = json.loads((directory / "modules.json").read_text())
        roots = [directory / m["path"] for m in modules if isinstance(m, dict) and m.get("path")]
    except (OSError, ValueError, TypeError):
        pass
    files = {p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")}
    for root in roots:
        if root.is_dir():
            files |= {p for p in root.rglob("*") if p.is_file() and not _hidden(p.relative_to(directory))}
    return sorted(files)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _directory_digest(directory: Path) -> str:
    memory = _DigestMemory()
    digest = hashlib.sha256()
    for path in model_files(directory):
        digest.update(f"{path.relative_to(directory).as_posix()}\0{memory.digest(path)}\n".encode())
    memory.save()
    return digest.hexdigest()


class _DigestMemory:
    """File digests remembered across runs, keyed by the file's identity and time stamps (best effort)."""

    def __init__(self) -> None:
        from rqa.models import cache_dir

        self.path = cache_dir() / "file-digests.json"
        try:
            loaded = json.loads(self.path.read_text())
        except (OSError, ValueError):
            loaded = {}
        self.entries: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
        self.changed = False

    def digest(self, path: Path) -> str:
        before = _stamp(path)
        if before[2] <= _SMALL_FILE:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        key = str(path.resolve())
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == before and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        started = time.time_ns()
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        settled = started - max(before[3], before[4]) > _RACY_SECONDS * 1e9
        if settled and _stamp(path) == before:  # unchanged while read, and not just written
            self.entries[key] = {"stamp": before, "sha256": digest.hexdigest()}
            self.changed = True
        return digest.hexdigest()

    def save(self) -> None:
        if not self.changed:
            return
        kept = {key: entry for key, entry in self.entries.items() if os.path.exists(key)}
        temporary = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=".file-digests-", dir=self.path.parent)
            with os.fdopen(handle, "w") as out:
                json.dump(kept, out)
            os.replace(temporary, self.path)  # concurrent writers: the last one wins, the others recompute
        except OSError as error:  # a read-only cache only costs time
            log.debug("could not remember file digests in %s: %s", self.path, error)
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
