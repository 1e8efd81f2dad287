"""Reading a saved training run's settings (``rqa_args.json``), the defaults of ``evaluate``, ``ask`` and ``chat``.

One reader, so every command agrees on what a run recorded and fails the same way on a broken file. A value
given on the command line always wins; ``setting`` and ``component`` spell that order out once. Paths in the
file are as the training command received them (relative ones to the directory it ran in).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rqa.errors import RqaError

RUN_ARGS = "rqa_args.json"
T = TypeVar("T")
_KINDS = {int: "an integer", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class SavedComponent:
    """A component a run resolved: its name and the options it was built with."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SavedRun:
    """What a run recorded that evaluating or asking it again needs; None where the file does not say."""

    directory: Path
    formatter: SavedComponent | None = None
    retriever: SavedComponent | None = None
    metrics: list[str] | None = None
    embedding_model: str | None = None
    top_k: int | None = None
    max_new_tokens: int | None = None
    max_seq_length: int | None = None
    eval_batch_size: int | None = None  # per_device_eval_batch_size: the batch its evaluations generated in
    use_flash_attention: bool | None = None
    documents: str | None = None  # full_dataset_file_path
    index: str | None = None  # full_dataset_index_path
    qa_files: tuple[str, ...] = ()  # train, eval, test: their passages are the database when none was given

    @property
    def args_file(self) -> Path:
        return self.directory / RUN_ARGS

    def database(self) -> str | None:
        """The run's document database; a file that has moved since is an error naming where it was recorded."""
        if self.documents and not Path(self.documents).exists():
            raise RqaError(
                f"{self.documents} (full_dataset_file_path in {self.args_file}) does not exist; pass --documents"
            )
        return self.documents

    def index_for(self, documents: str | None) -> str | None:
        """The run's index directory, for the run's own database only: indexing another would replace it."""
        if not _same_path(documents, self.documents):
            return None
        return self.index or str(self.directory / "index")


def read_run(model: str | Path | None) -> SavedRun | None:
    """The settings of the training run in directory ``model``; None for anything else (a Hub id, a plain model)."""
    if not model:
        return None
    path = Path(model) / RUN_ARGS
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RqaError(f"{path}: cannot be read as JSON ({error}); pass the settings as options instead") from None
    if not isinstance(raw, dict):
        raise RqaError(f"{path}: expected a JSON object of training arguments, got {type(raw).__name__}")
    read = _Reader(path, raw)
    return SavedRun(
        directory=Path(model),
        formatter=read.component("resolved_formatter"),
        retriever=read.component("resolved_retriever"),
        metrics=read.names("resolved_metrics"),
        embedding_model=read.value("eval_embedding_model", str),
        top_k=read.value("top_k", int),
        max_new_tokens=read.value("max_new_tokens", int),
        max_seq_length=read.value("max_seq_length", int),
        eval_batch_size=read.value("per_device_eval_batch_size", int),
        use_flash_attention=read.value("use_flash_attention", bool),
        documents=read.value("full_dataset_file_path", str) or None,
        index=read.value("full_dataset_index_path", str) or None,
        qa_files=tuple(f for f in (read.value(f"{s}_file", str) for s in ("train", "eval", "test")) if f),
    )


def setting(given: T | None, saved: T | None, default: T) -> T:
    """The command line's value, else the run's, else rqa's default."""
    if given is not None:
        return given
    return saved if saved is not None else default


def component(given: str | None, saved: SavedComponent | None, default: str) -> tuple[str, dict[str, Any]]:
    """The component spec to use and the options it starts from (``--*_option`` pairs still override them).

    The run's options belong to the run's component: they carry over when no name is given or the same one is,
    never to another component, whose factory may not even accept them.
    """
    if given is None:
        return (saved.name, dict(saved.options)) if saved else (default, {})
    same = saved is not None and given.partition(":")[0].strip() == saved.name
    return given, dict(saved.options) if same else {}


class _Reader:
    """Typed access to the file's fields, with an error naming the file and the field."""

    def __init__(self, path: Path, raw: dict[str, Any]) -> None:
        self.path, self.raw = path, raw

    def _wrong(self, key: str, expected: str) -> RqaError:
        return RqaError(f"{self.path}: '{key}' should be {expected}, got {self.raw[key]!r}")

    def value(self, key: str, kind: type[T]) -> T | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self._wrong(key, _KINDS.get(kind, kind.__name__))
        return value

    def names(self, key: str) -> list[str] | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            raise self._wrong(key, "a list of names")
        return list(value)

    def component(self, key: str) -> SavedComponent | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("name"), str)
            or not isinstance(value.get("options") or {}, dict)
        ):
            raise self._wrong(key, '{"name": ..., "options": {...}}')
        return SavedComponent(value["name"], dict(value.get("options") or {}))


def _same_path(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or Path(a).resolve() == Path(b).resolve()
