"""The one assembly point: a run's record and the command line → tokenizer → formatter → encoder, retriever and
generator.

Every command that answers with a model builds its parts here: ``rqa train`` (its encoder, for training and for
the evaluations while it trains), ``rqa evaluate``, ``rqa ask``/``chat`` and ``rqa serve``. A model is therefore
always asked with prompt ids made the way it was trained on them, from the choices its run recorded.
``resolve_settings`` states the precedence once: the command line, then the run's record, then rqa's defaults.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rqa.runs import RunRecord, component, read_run, setting

if TYPE_CHECKING:
    from rqa.data import ExampleEncoder, Supervise
    from rqa.pipeline import ComponentChoice
    from rqa.schema import Document, Example

log = logging.getLogger("rqa")
DEFAULT_FORMATTER = "auto"
DEFAULT_RETRIEVER = "dense-faiss"
_OPTION_NAMES = {"formatter_option": "formatter_options", "retriever_option": "retriever_options"}


@dataclass(frozen=True)
class RunSettings:
    """What a command assembles from: each value the command line's, else the run's, else rqa's default."""

    model: str | None
    documents: str | None = None
    index: str | None = None
    formatter: str = DEFAULT_FORMATTER
    formatter_options: dict[str, Any] = field(default_factory=dict)  # the run's, for the run's formatter
    formatter_option_pairs: tuple[str, ...] = ()  # the command line's KEY=VALUE pairs, applied over them
    retriever: str = DEFAULT_RETRIEVER
    retriever_options: dict[str, Any] = field(default_factory=dict)
    retriever_option_pairs: tuple[str, ...] = ()
    embedding_model: str | None = None
    top_k: int = 4
    max_new_tokens: int = 128
    max_seq_length: int = 2048
    batch_size: int = 32  # questions generated together (a run's per_device_eval_batch_size)
    use_flash_attention: bool = False
    metrics: list[str] = field(default_factory=lambda: ["all"])
    generator: str = "hf"  # a generator backend spec (rqa.backends); hf: the local model above
    run: RunRecord | None = None  # the record the settings came from, if ``model`` is a run

    def checks(self, *parts: str) -> dict[str, Callable[[], Any]]:
        """Checks (for ``rqa.pipeline.check_all``) that choose ``parts``, in order: formatter, retriever, generator.

        The generator check gives None for the local ``hf`` backend: the model is then loaded from ``model``.
        """
        from rqa.backends import remote_generator
        from rqa.pipeline import choose

        every = {
            "formatter": lambda: choose(
                "formatters", self.formatter, self.formatter_option_pairs, **self.formatter_options
            ),
            "retriever": lambda: choose(
                "retrievers", self.retriever, self.retriever_option_pairs, **self.retriever_options
            ),
            "generator": lambda: remote_generator(self.generator),
        }
        return {part: every[part] for part in parts}


def resolve_settings(
    model: str | None,
    documents: str | None = None,
    index: str | None = None,
    formatter: str | None = None,
    formatter_options: Sequence[str] = (),
    retriever: str | None = None,
    retriever_options: Sequence[str] = (),
    embedding_model: str | None = None,
    top_k: int | None = None,
    max_new_tokens: int | None = None,
    max_seq_length: int | None = None,
    batch_size: int | None = None,
    use_flash_attention: bool | None = None,
    metrics: Sequence[str] | None = None,
    generator: str | None = None,
) -> RunSettings:
    """The settings for ``model``: options given (not None) win; its run's record fills the rest; then defaults.

    The index defaults to the run's only for the run's own database (indexing another would replace it).
    """
    run = read_run(model)
    saved = run or RunRecord(Path(model or "."))  # nothing recorded: every setting falls to the default
    documents = documents or saved.database()
    if index is None and run is not None and documents:
        index = run.index_for(documents)
    formatter, saved_formatter_options = component(formatter, saved.formatter, DEFAULT_FORMATTER)
    retriever, saved_retriever_options = component(retriever, saved.retriever, DEFAULT_RETRIEVER)
    return RunSettings(
        model=model,
        documents=documents,
        index=index,
        formatter=formatter,
        formatter_options=saved_formatter_options,
        formatter_option_pairs=tuple(formatter_options),
        retriever=retriever,
        retriever_options=saved_retriever_options,
        retriever_option_pairs=tuple(retriever_options),
        embedding_model=embedding_model or saved.embedding_model,
        top_k=setting(top_k, saved.top_k, 4),
        max_new_tokens=setting(max_new_tokens, saved.max_new_tokens, 128),
        max_seq_length=setting(max_seq_length, saved.max_seq_length, 2048),
        batch_size=setting(batch_size, saved.eval_batch_size, 32),
        use_flash_attention=setting(use_flash_attention, saved.use_flash_attention, False),
        metrics=setting(list(metrics) if metrics else None, saved.metrics, ["all"]),
        generator=generator or "hf",
        run=run,
    )


def option_overrides(options: Mapping[str, Any], leave_out: Sequence[str] = ()) -> dict[str, Any]:
    """A command's click options as ``resolve_settings`` keywords: ``--formatter_option`` pairs become
    ``formatter_options`` and so on; options it does not take (and ``model``, given apart) are left out."""
    accepted = set(inspect.signature(resolve_settings).parameters) - {"model", *leave_out}
    renamed = {_OPTION_NAMES.get(name, name): value for name, value in options.items()}
    return {name: value for name, value in renamed.items() if name in accepted}


def build_encoder(
    model_path: str,
    formatter: ComponentChoice,
    max_seq_length: int,
    supervise: Supervise = "answer",
    supervise_history: bool = False,
) -> ExampleEncoder:
    """tokenizer → formatter → encoder: the one way prompt ids are made, for training and for generation alike."""
    from rqa.data import ExampleEncoder
    from rqa.models import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    return ExampleEncoder(
        tokenizer,
        formatter.build(tokenizer=tokenizer),
        max_seq_length=max_seq_length,
        supervise=supervise,
        supervise_history=supervise_history,
    )


@dataclass
class Generation:
    """What answers: the local model with its encoder, or a backend that renders its own prompts."""

    encoder: ExampleEncoder | None = None
    model: Any = None
    backend: Any = None  # an rqa.contracts.Generator; None: the local model answers


def build_generation(
    settings: RunSettings, generator: ComponentChoice | None, formatter: ComponentChoice | None
) -> Generation:
    """The chosen backend, built; or (``generator`` None, the local ``hf``) the model with its encoder."""
    if generator is not None:
        return Generation(backend=generator.build())
    if formatter is None:
        raise ValueError("the local model needs a formatter")
    from rqa.models import load_generator, resolve_generator

    model_path = resolve_generator(settings.model)
    encoder = build_encoder(model_path, formatter, settings.max_seq_length)
    model = load_generator(model_path, use_flash_attention=settings.use_flash_attention, log=log.warning)
    return Generation(encoder=encoder, model=model)


def build_retriever(
    settings: RunSettings,
    retriever: ComponentChoice,
    examples: Sequence[Example] = (),
    run_examples: Sequence[Example] | None = None,
) -> Any:
    """The chosen retriever over the settings' database (see ``database_and_index``), its index loaded or built."""
    from rqa.pipeline import build_retriever

    documents, index = database_and_index(settings.documents, settings.index, settings.run, run_examples, examples)
    return build_retriever(retriever, documents, index, embedding_model=settings.embedding_model)


def database_and_index(
    documents: str | None,
    index: str | None,
    run: RunRecord | None,
    run_examples: Sequence[Example] | None,
    examples: Sequence[Example],
) -> tuple[list[Document], str | None]:
    """The documents to retrieve from and their index directory.

    Without a database, the passages of QA files: a run given none retrieved from the passages of its own QA files
    (``run_examples``), and the same passages reuse its index. When those files have moved, the passages of
    ``examples`` are indexed apart (in memory unless ``index``), never over the run's index.
    """
    from rqa.pipeline import load_database

    if documents is None and run_examples is not None:
        log.info("the run had no document database: retrieving from the passages of its QA files, as it did")
        database = load_database(None, run_examples)
    else:
        database = load_database(documents, examples)
    if index is None and run is not None and (documents is not None or run_examples is not None):
        index = run.index_for(documents)
    return database, index
