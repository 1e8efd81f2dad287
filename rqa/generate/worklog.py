"""The work log of ``rqa generate``: one JSON line per finished passage, flushed to disk before the next begins.

A run killed at any moment (``kill -9``, a power cut) loses at most the passages in flight: the same command again
reads the log back, rebuilds its state from it and continues with the next passage of the plan, so the data set has
neither duplicates nor gaps. The first line identifies the run (the settings' fingerprint); a log written with other
settings is refused rather than mixed in. A line cut short by the kill is dropped, since it was never finished.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rqa.errors import DataError, RqaError

LOG_NAME = "generation-log.jsonl"


class WorkLog:
    """Append-only, fsynced JSON lines; ``records`` holds what an earlier run of the same settings finished."""

    def __init__(self, path: Path, records: list[dict[str, Any]]) -> None:
        self.path, self.records = path, records
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run; closed by close()

    @classmethod
    def open(cls, output_dir: str | Path, header: dict[str, Any]) -> WorkLog:
        """The log in ``output_dir``: continued when its header's fingerprint matches, started when absent."""
        path = Path(output_dir) / LOG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = list(_complete_lines(path)) if path.exists() else []
        if lines:
            found = lines[0][1]
            if not isinstance(found, dict) or found.get("fingerprint") != header["fingerprint"]:
                raise RqaError(
                    f"{path} was written by rqa generate with other settings ({_changes(found, header)}): "
                    "use another --output_dir, or delete the log to start over"
                )
            return cls(path, [record for _, record in lines[1:]])
        path.write_text("", encoding="utf-8")
        log = cls(path, [])
        log.append(header)
        return log

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and make it durable before returning."""
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> WorkLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _complete_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """The log's finished lines; a last line without its newline (a write cut short) is cut off the file."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    for number, raw in enumerate(data[:end].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(
                str(path), number, "is not a finished work-log record: delete the log to start over"
            ) from None


def _changes(found: Any, header: dict[str, Any]) -> str:
    """Which settings differ, for the refusal message."""
    if not isinstance(found, dict) or not isinstance(found.get("settings"), dict):
        return "its first line is not a generate header"
    old, new = found["settings"], header.get("settings", {})
    changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key) and key != "output_dir")
    return "changed: " + ", ".join(changed) if changed else "the documents or the prompts changed"
