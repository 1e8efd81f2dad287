"""A run's record, ``rqa_args.json``: written by ``rqa train`` and ``rqa train-retriever``, read back by
``evaluate``, ``ask``, ``chat`` and ``serve``.

One typed record both writes and reads the file, so every command agrees on what a run recorded and fails the same
way on a broken file. The file is flat: every resolved argument (ours and Hugging Face's) under its own name, then
what the run resolved its names to (``resolved_*``), rqa's version and, for each component, the plugin and
distribution that provided it (``resolved_components``). Files written before those last two keys still load.
A value given on the command line always wins; ``setting`` and ``component`` spell that order out once. Paths in
the file are as the training command received them (relative ones to the directory it ran in).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rqa.errors import RqaError
from rqa.pipeline import ComponentChoice
from rqa.provenance import (
    COMPONENTS_KEY,
    RQA_VERSION_KEY,
    ComponentSource,
    provenance_json,
    rqa_version,
    sources_of,
)

RUN_ARGS = "rqa_args.json"
T = TypeVar("T")
_KINDS = {int: "an integer", str: "a string", bool: "true or false"}
# the record's own keys; every other key of the file is an argument
_COMPONENT_KEYS = {"formatter": "resolved_formatter", "loss": "resolved_loss", "retriever": "resolved_retriever"}
RECORD_KEYS = frozenset(
    {"resolved_model_path", *_COMPONENT_KEYS.values(), "resolved_metrics", RQA_VERSION_KEY, COMPONENTS_KEY}
)


@dataclass(frozen=True)
class RunRecord:
    """What a run resolved; the typed settings below are read from ``arguments`` (None where it does not say)."""

    directory: Path
    arguments: dict[str, Any] = field(default_factory=dict)  # flat, as ``TrainingArguments.to_dict`` gives them
    model_path: str | None = None  # resolved_model_path: the generator the run loaded
    formatter: ComponentChoice | None = None
    loss: ComponentChoice | None = None
    retriever: ComponentChoice | None = None
    metrics: list[str] | None = None
    rqa_version: str | None = None  # None: a file from before versions were recorded
    sources: tuple[ComponentSource, ...] = ()  # who provided each component, with its version
    # typed views of ``arguments``, checked when the record is made: what re-evaluating or asking the run needs
    embedding_model: str | None = field(init=False, compare=False, repr=False)
    top_k: int | None = field(init=False, compare=False, repr=False)
    max_new_tokens: int | None = field(init=False, compare=False, repr=False)
    max_seq_length: int | None = field(init=False, compare=False, repr=False)
    eval_batch_size: int | None = field(init=False, compare=False, repr=False)  # per_device_eval_batch_size
    use_flash_attention: bool | None = field(init=False, compare=False, repr=False)
    documents: str | None = field(init=False, compare=False, repr=False)  # full_dataset_file_path
    index: str | None = field(init=False, compare=False, repr=False)  # full_dataset_index_path
    qa_files: tuple[str, ...] = field(init=False, compare=False, repr=False)  # train, eval, test

    def __post_init__(self) -> None:
        read = _Reader(self.args_file, self.arguments)
        typed = {
            "embedding_model": read.value("eval_embedding_model", str),
            "top_k": read.value("top_k", int),
            "max_new_tokens": read.value("max_new_tokens", int),
            "max_seq_length": read.value("max_seq_length", int),
            "eval_batch_size": read.value("per_device_eval_batch_size", int),
            "use_flash_attention": read.value("use_flash_attention", bool),
            "documents": read.value("full_dataset_file_path", str) or None,
            "index": read.value("full_dataset_index_path", str) or None,
            "qa_files": tuple(f for f in (read.value(f"{s}_file", str) for s in ("train", "eval", "test")) if f),
        }
        for name, value in typed.items():
            object.__setattr__(self, name, value)

    @classmethod
    def create(
        cls,
        directory: str | Path,
        arguments: Mapping[str, Any],
        *,
        model_path: str | None = None,
        formatter: ComponentChoice | None = None,
        loss: ComponentChoice | None = None,
        retriever: ComponentChoice | None = None,
        metrics: Sequence[str] | None = None,
    ) -> RunRecord:
        """The record of a run starting now: this rqa's version and the provider of every component it chose."""
        chosen: list[ComponentChoice | None] = [formatter, loss, retriever]
        chosen += [ComponentChoice("metrics", name) for name in metrics or ()]
        return cls(
            directory=Path(directory),
            arguments=dict(arguments),
            model_path=model_path,
            formatter=formatter,
            loss=loss,
            retriever=retriever,
            metrics=list(metrics) if metrics is not None else None,
            rqa_version=rqa_version(),
            sources=sources_of(chosen),
        )

    @property
    def args_file(self) -> Path:
        return self.directory / RUN_ARGS

    def to_json(self) -> dict[str, Any]:
        """The file's content: the arguments first, then the record's own keys (those it has)."""
        data = dict(self.arguments)
        if self.model_path is not None:
            data["resolved_model_path"] = self.model_path
        for attribute, key in _COMPONENT_KEYS.items():
            choice = getattr(self, attribute)
            if choice is not None:
                data[key] = {"name": choice.name, "options": choice.options}
        if self.metrics is not None:
            data["resolved_metrics"] = list(self.metrics)
        if self.rqa_version is not None:
            data.update(provenance_json(self.rqa_version, self.sources))
        return data

    def write(self) -> Path:
        from rqa.files import write_json_atomic

        write_json_atomic(self.args_file, self.to_json())
        return self.args_file

    @classmethod
    def read(cls, directory: str | Path | None) -> RunRecord | None:
        """The record in ``directory``; None for anything else (no directory, a Hub id, a plain model)."""
        if not directory:
            return None
        path = Path(directory) / RUN_ARGS
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RqaError(f"{path}: cannot be read as JSON ({error}); pass the settings as options instead") from None
        if not isinstance(raw, dict):
            raise RqaError(f"{path}: expected a JSON object of training arguments, got {type(raw).__name__}")
        read = _Reader(path, raw)
        sources = read.sources(COMPONENTS_KEY)
        return cls(
            directory=Path(directory),
            arguments={key: value for key, value in raw.items() if key not in RECORD_KEYS},
            model_path=read.value("resolved_model_path", str),
            formatter=read.component("resolved_formatter", ("formatters",), sources),
            loss=read.component("resolved_loss", ("losses", "retriever_losses"), sources),
            retriever=read.component("resolved_retriever", ("retrievers",), sources),
            metrics=read.names("resolved_metrics"),
            rqa_version=read.value(RQA_VERSION_KEY, str),
            sources=sources,
        )

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


def read_run(model: str | Path | None) -> RunRecord | None:
    """``RunRecord.read``: the record of the training run in directory ``model``, else None."""
    return RunRecord.read(model)


def setting(given: T | None, saved: T | None, default: T) -> T:
    """The command line's value, else the run's, else rqa's default."""
    if given is not None:
        return given
    return saved if saved is not None else default


def component(given: str | None, saved: ComponentChoice | None, default: str) -> tuple[str, dict[str, Any]]:
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

    def __init__(self, path: Path, raw: Mapping[str, Any]) -> None:
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

    def component(self, key: str, kinds: Sequence[str], sources: Iterable[ComponentSource]) -> ComponentChoice | None:
        """The component under ``key``; its kind is the first of ``kinds`` unless a recorded source says another."""
        value = self.raw.get(key)
        if value is None:
            return None
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("name"), str)
            or not isinstance(value.get("options") or {}, dict)
        ):
            raise self._wrong(key, '{"name": ..., "options": {...}}')
        kind = next((s.kind for s in sources if s.name == value["name"] and s.kind in kinds), kinds[0])
        return ComponentChoice(kind, value["name"], dict(value.get("options") or {}))

    def sources(self, key: str) -> tuple[ComponentSource, ...]:
        value = self.raw.get(key)
        if value is None:
            return ()
        sources = [ComponentSource.from_json(item) for item in value] if isinstance(value, list) else [None]
        if any(source is None for source in sources):
            raise self._wrong(key, 'a list of {"kind": ..., "name": ..., "options": {...}, "plugin": ..., ...}')
        return tuple(s for s in sources if s is not None)


def _same_path(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or Path(a).resolve() == Path(b).resolve()
