"""Records rqa reads — documents, chat turns, QA examples — and their validating readers.

Files are LocalRQA-compatible. Every record is validated up front; an error names the file, the line and
the field. Pickled LocalRQA databases are read through a restricted unpickler that executes nothing.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import logging
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from rqa.errors import DataError

log = logging.getLogger("rqa")
Role = Literal["user", "assistant"]
_ASSISTANT_SPEAKERS = {"assistant", "system", "bot", "ai", "gpt"}


@dataclass(frozen=True)
class Document:
    """A passage; ``fmt_content`` (source and title included) is what the model and embedder see."""

    page_content: str
    fmt_content: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def text(self) -> str:
        return self.fmt_content or self.page_content

    def to_dict(self) -> dict[str, Any]:
        return {"page_content": self.page_content, "fmt_content": self.fmt_content, "metadata": self.metadata}


@dataclass(frozen=True)
class Turn:
    role: Role
    content: str


@dataclass(frozen=True)
class Example:
    question: str
    gold_answer: str
    gold_docs: tuple[Document, ...]
    chat_history: tuple[Turn, ...] = ()
    hard_neg_docs: tuple[Document, ...] = ()
    source: str = ""  # "file:line", for messages about this example

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "gold_answer": self.gold_answer,
            "gold_docs": [d.to_dict() for d in self.gold_docs],
            "chat_history": [{"role": t.role, "content": t.content} for t in self.chat_history],
        }


def _parse_metadata(value: Any, where: tuple[str, int], name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, str):  # older files store a Python-literal dict; literal_eval never runs code
        try:
            parsed = ast.literal_eval(value) if value.strip() else {}
        except (ValueError, SyntaxError):
            raise DataError(*where, "is not a dict or a Python-literal dict string", field=name) from None
        if isinstance(parsed, dict):
            return parsed
    raise DataError(*where, f"must be a dict, got {type(value).__name__}", field=name)


def _require_str(record: dict[str, Any], key: str, where: tuple[str, int], name: str, empty_ok=False) -> str:
    if key not in record:
        raise DataError(*where, "is missing", field=name)
    value = record[key]
    if not isinstance(value, str):
        raise DataError(*where, f"must be a string, got {type(value).__name__}", field=name)
    if not empty_ok and not value.strip():
        raise DataError(*where, "is empty", field=name)
    return value


def parse_document(record: Any, where: tuple[str, int], name: str = "document") -> Document:
    if not isinstance(record, dict):
        raise DataError(*where, f"must be an object, got {type(record).__name__}", field=name)
    page_content = _require_str(record, "page_content", where, f"{name}.page_content")
    fmt_content = record.get("fmt_content") or ""
    if not isinstance(fmt_content, str):
        raise DataError(*where, "must be a string", field=f"{name}.fmt_content")
    metadata = _parse_metadata(record.get("metadata"), where, f"{name}.metadata")
    return Document(page_content=page_content, fmt_content=fmt_content, metadata=metadata)


def parse_turn(record: Any, where: tuple[str, int], name: str) -> Turn:
    """A history turn: ``{"speaker", "message"}`` (LocalRQA) or ``{"role", "content"}``."""
    if not isinstance(record, dict):
        raise DataError(*where, f"must be an object, got {type(record).__name__}", field=name)
    if "speaker" in record or "message" in record:
        speaker = _require_str(record, "speaker", where, f"{name}.speaker")
        content = _require_str(record, "message", where, f"{name}.message", empty_ok=True)
    elif "role" in record or "content" in record:
        speaker = _require_str(record, "role", where, f"{name}.role")
        content = _require_str(record, "content", where, f"{name}.content", empty_ok=True)
    else:
        raise DataError(*where, "needs 'speaker' and 'message' (or 'role' and 'content')", field=name)
    role: Role = "assistant" if speaker.strip().lower() in _ASSISTANT_SPEAKERS else "user"
    if speaker.strip().lower() not in _ASSISTANT_SPEAKERS | {"user", "human"}:
        # LocalRQA stores the prefix itself ("USER", "ASSISTANT", "[/INST]"): treat "assist*" as assistant
        role = "assistant" if "assist" in speaker.lower() or "/inst" in speaker.lower() else "user"
    return Turn(role=role, content=content)


def parse_example(record: Any, where: tuple[str, int]) -> Example:
    if not isinstance(record, dict):
        raise DataError(*where, f"a QA record must be a JSON object, got {type(record).__name__}")
    if isinstance(record.get("question"), str) and not record["question"].strip():
        raise EmptyQuestion(*where, "is empty", field="question")
    question = _require_str(record, "question", where, "question")
    answer = _require_str(record, "gold_answer", where, "gold_answer")
    gold = record.get("gold_docs")
    if not isinstance(gold, list):
        kind = "missing" if gold is None else f"a {type(gold).__name__}"
        raise DataError(*where, f"must be a list of documents, got {kind}", field="gold_docs")
    if not gold:
        raise DataError(*where, "is empty: every example needs at least one gold passage", field="gold_docs")
    history = record.get("chat_history") or []
    if not isinstance(history, list):
        raise DataError(*where, f"must be a list of turns, got {type(history).__name__}", field="chat_history")
    negatives = record.get("hard_neg_docs") or []
    if not isinstance(negatives, list):
        raise DataError(*where, "must be a list of documents", field="hard_neg_docs")
    return Example(
        question=question,
        gold_answer=answer,
        gold_docs=tuple(parse_document(d, where, f"gold_docs[{i}]") for i, d in enumerate(gold)),
        chat_history=tuple(parse_turn(t, where, f"chat_history[{i}]") for i, t in enumerate(history)),
        hard_neg_docs=tuple(parse_document(d, where, f"hard_neg_docs[{i}]") for i, d in enumerate(negatives)),
        source=f"{where[0]}:{where[1]}",
    )


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line; broken JSON or bytes name the line."""
    path = str(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below; open errors need their own message
    except OSError as error:
        raise DataError(path, None, f"cannot be read: {error.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(path, number, f"is not valid UTF-8 (byte {error.start})") from None
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                message = f"is not valid JSON: {error.msg} (column {error.colno})"
                raise DataError(path, number, message) from None


class EmptyQuestion(DataError):
    """A record with no question: skipped with a warning (generated data sets contain a few)."""


def read_examples(path: str | Path) -> list[Example]:
    """Read and validate a QA JSONL file (``train_w_qa.jsonl`` and friends)."""
    examples: list[Example] = []
    for number, record in iter_jsonl(path):
        try:
            examples.append(parse_example(record, (str(path), number)))
        except EmptyQuestion as skipped:
            log.warning("%s; skipping this record", skipped)
    if not examples:
        raise DataError(str(path), None, "holds no QA records")
    return examples


class _LocalRQAUnpickler(pickle.Unpickler):
    """Maps LocalRQA's ``Document`` class to a plain dict and refuses every other global."""

    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {("local_rqa.schema.document", "Document"), ("open_rqa.schema.document", "Document")}
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return _PickledDocument
        raise pickle.UnpicklingError(
            f"refusing to load '{module}.{name}': only LocalRQA Document objects are allowed in a database pickle"
        )


class _PickledDocument:
    """Stand-in for ``local_rqa.schema.document.Document``: receives its state, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.state = state[0] if isinstance(state, tuple) and len(state) == 2 else state


def _read_pickle(path: str) -> list[Any]:
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        loaded = _LocalRQAUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as error:
        raise DataError(path, None, f"is not a safe LocalRQA database pickle: {error}") from None
    except Exception as error:
        raise DataError(path, None, f"cannot be unpickled: {error}") from None
    if not isinstance(loaded, list):
        raise DataError(path, None, f"must hold a list of documents, got {type(loaded).__name__}")
    return [item.state if isinstance(item, _PickledDocument) else item for item in loaded]


def read_documents(path: str | Path) -> list[Document]:
    """Read a document database: JSONL (native) or a LocalRQA ``.pkl``; duplicates are dropped."""
    path = str(path)
    if path.endswith((".pkl", ".pickle")):
        records = [(number, record) for number, record in enumerate(_read_pickle(path), start=1)]
        label = "item"
    else:
        records = list(iter_jsonl(path))
        label = "line"
    documents: list[Document] = []
    seen: set[str] = set()
    for number, record in records:
        document = parse_document(record, (path if label == "line" else f"{path} item", number))
        if document.page_content not in seen:
            seen.add(document.page_content)
            documents.append(document)
    if not documents:
        raise DataError(path, None, "holds no documents")
    if len(documents) < len(records):
        log.warning(
            "%s: dropped %d duplicate documents (same page_content); %d remain",
            path,
            len(records) - len(documents),
            len(documents),
        )
    return documents


def fingerprint_documents(documents: list[Document]) -> str:
    """A content hash of a database, for index manifests and caches."""
    digest = hashlib.sha256()
    for document in documents:
        for part in (document.page_content, document.fmt_content):
            digest.update(part.encode("utf-8"))
            digest.update(b"\0")
    return digest.hexdigest()
