"""The hooks a plugin implements to add components to rqa.

Each hook receives ``register(name, factory, description=None)``. ``factory`` is a callable that builds the
component from keyword options; registering factories rather than built objects keeps discovery and
``rqa list-plugins`` cheap. Built-in components use these same hooks. What each kind of component must offer
is declared in ``rqa.contracts``; plugins import the marker as ``from rqa import hookimpl``.
"""

from __future__ import annotations

from typing import Protocol

import pluggy

PROJECT_NAME = "rqa"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class Register(Protocol):
    def __call__(self, name: str, factory: object, description: str | None = None) -> None: ...


@hookspec
def register_formatters(register: Register) -> None:
    """Add chat formatters: they turn an example (history, question, passages, answer) into prompt text."""


@hookspec
def register_losses(register: Register) -> None:
    """Add training losses: they map answer-position logits and targets to a scalar."""


@hookspec
def register_retrievers(register: Register) -> None:
    """Add retrievers: they index a document database and return the top-k passages for queries."""


@hookspec
def register_metrics(register: Register) -> None:
    """Add evaluation metrics: they score prediction rows and return named values."""


@hookspec
def register_retriever_losses(register: Register) -> None:
    """Add retriever losses for ``rqa train-retriever``: they score a batch of (question, passage...) embeddings."""


@hookspec
def register_generators(register: Register) -> None:
    """Add generator backends: they answer questions from passages, and chat, with a local model or an endpoint."""


@hookspec
def register_passage_filters(register: Register) -> None:
    """Add passage filters for ``rqa generate --filter``: they say which passages are worth asking questions about."""
