"""Human feedback from the chat page: one JSONL row per thumbs-up or thumbs-down, with what was judged.

Each row keeps the question, the answer, the passages it came from and the model that served it (the model is
the server's own name, never the client's word), so the file can be read later as a human evaluation set.
Rows are appended under a lock and flushed at once: a crash loses at most the row being written.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
from pathlib import Path
from typing import Any

from rqa.errors import RqaError

MAX_COMMENT = 5000
RATINGS = ("up", "down")


class FeedbackLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, body: Any, model: str) -> dict[str, Any]:
        """Check a feedback body and append it as a row; ``RqaError`` names what is wrong."""
        if not isinstance(body, dict):
            raise RqaError("feedback must be a JSON object")
        rating = body.get("rating")
        if rating not in RATINGS:
            raise RqaError(f"rating must be 'up' or 'down', got {rating!r}")
        for key in ("question", "answer"):
            if not isinstance(body.get(key), str):
                raise RqaError(f"'{key}' must be a string")
        comment = body.get("comment") or ""
        passages = body.get("passages") or []
        history = body.get("history") or []
        if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
            raise RqaError(f"'comment' must be a string of at most {MAX_COMMENT} characters")
        if not isinstance(passages, list) or not isinstance(history, list):
            raise RqaError("'passages' and 'history' must be lists")
        row = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": model,
            "rating": rating,
            "comment": comment,
            "question": body["question"],
            "answer": body["answer"],
            "passages": passages,
            "history": history,
        }
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        return row
