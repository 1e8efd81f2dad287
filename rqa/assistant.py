"""Answering questions with a trained model, as ``rqa ask`` and ``rqa chat`` do.

A question goes through exactly the path training and evaluation use: retrieve ``top_k`` passages for the
latest question, build an ``Example`` (history included), take ``ExampleEncoder.prompt_ids`` and generate with
``generate_answers``. A model trained on these prompts is therefore asked in the format it learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rqa.errors import RqaError
from rqa.runs import SavedRun, component, read_run, setting
from rqa.schema import Document, Example, Turn

Hit = tuple[Document, float]


@dataclass
class AssistantSettings:
    """Everything needed to load an assistant: the command line over a run's ``rqa_args.json``."""

    model: str | None
    documents: str
    index: str | None
    formatter: str = "auto"
    formatter_options: dict[str, Any] = field(default_factory=dict)
    formatter_option_pairs: tuple[str, ...] = ()
    retriever: str = "dense-faiss"
    retriever_options: dict[str, Any] = field(default_factory=dict)
    retriever_option_pairs: tuple[str, ...] = ()
    embedding_model: str | None = None
    top_k: int = 4
    max_new_tokens: int = 128
    max_seq_length: int = 2048
    generator: str = "hf"  # a generator backend spec (rqa.backends); hf: the local model above


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
    generator: str | None = None,
) -> AssistantSettings:
    """Options given win; a training run's choices fill the rest; then rqa's defaults."""
    run = read_run(model)
    saved = run or SavedRun(Path(model or "."))  # nothing recorded: every setting falls to the default
    documents = documents or saved.database()
    if not documents:
        raise RqaError("no document database: pass --documents (JSONL or LocalRQA .pkl)")
    if not Path(documents).exists():
        raise RqaError(f"{documents} does not exist; pass --documents")
    if index is None and run is not None:
        index = run.index_for(documents)
    formatter, saved_formatter_options = component(formatter, saved.formatter, "auto")
    retriever, saved_retriever_options = component(retriever, saved.retriever, "dense-faiss")
    return AssistantSettings(
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
        generator=generator or "hf",
    )


@dataclass
class Reply:
    question: str
    answer: str
    sources: list[Hit]
    prompt_ids: list[int]

    def to_dict(self) -> dict[str, Any]:
        """The shape ``rqa ask --json`` prints."""
        return {
            "question": self.question,
            "answer": self.answer,
            "sources": [
                {
                    "title": document.metadata.get("title", ""),
                    "source": document.metadata.get("source", ""),
                    "score": score,
                    "page_content": document.page_content,
                }
                for document, score in self.sources
            ],
        }


class Assistant:
    """A generator, its encoder and a retriever; answers a question given the conversation so far."""

    def __init__(
        self,
        model: Any,
        encoder: Any,
        retriever: Any,
        top_k: int = 4,
        max_new_tokens: int = 128,
        generator: Any = None,
    ) -> None:
        self.model, self.encoder, self.retriever = model, encoder, retriever
        self.generator = generator  # a backend other than the local model (rqa.backends); None: the model
        self.top_k, self.max_new_tokens = top_k, max_new_tokens

    @classmethod
    def load(cls, settings: AssistantSettings) -> Assistant:
        """Check the names first, then load the database and index, then the model."""
        from rqa.backends import remote_generator
        from rqa.pipeline import build_retriever, choose, choose_all

        chosen, problems = choose_all(
            {
                "formatter": lambda: choose(
                    "formatters", settings.formatter, settings.formatter_option_pairs, **settings.formatter_options
                ),
                "retriever": lambda: choose(
                    "retrievers", settings.retriever, settings.retriever_option_pairs, **settings.retriever_options
                ),
                "generator": lambda: remote_generator(settings.generator),
            }
        )
        if problems:
            raise RqaError("the configuration has problems:\n  - " + "\n  - ".join(problems))
        from rqa.schema import read_documents

        documents = read_documents(settings.documents)
        retriever = build_retriever(
            chosen["retriever"], documents, settings.index, embedding_model=settings.embedding_model
        )
        if chosen["generator"] is not None:  # a remote backend renders its own prompts: no local model
            generator = chosen["generator"].build()
            return cls(None, None, retriever, settings.top_k, settings.max_new_tokens, generator=generator)

        from rqa.data import ExampleEncoder
        from rqa.models import load_generator, load_tokenizer, resolve_generator

        model_path = resolve_generator(settings.model)
        tokenizer = load_tokenizer(model_path)
        formatter = chosen["formatter"].build(tokenizer=tokenizer)
        encoder = ExampleEncoder(tokenizer, formatter, max_seq_length=settings.max_seq_length)
        return cls(load_generator(model_path), encoder, retriever, settings.top_k, settings.max_new_tokens)

    def prompt_ids(self, question: str, history: Sequence[Turn], passages: Sequence[Document]) -> list[int]:
        """The prompt as training builds it: the example's gold passages are the retrieved ones."""
        example = Example(question=question, gold_answer="", gold_docs=tuple(passages), chat_history=tuple(history))
        return self.encoder.prompt_ids(example, passages)

    def reply(self, question: str, history: Sequence[Turn] = ()) -> Reply:
        from rqa.generation import generate_answers

        (hits,) = self.retriever.retrieve([question], self.top_k)
        if self.generator is not None:
            example = Example(question=question, gold_answer="", gold_docs=(), chat_history=tuple(history))
            (answer,) = self.generator.answer([example], [[document for document, _ in hits]], self.max_new_tokens)
            return Reply(question=question, answer=answer, sources=list(hits), prompt_ids=[])
        prompt = self.prompt_ids(question, history, [document for document, _ in hits])
        answers, _ = generate_answers(
            self.model,
            self.encoder.tokenizer,
            [prompt],
            end_of_turn=self.encoder.formatter.end_of_turn,
            max_new_tokens=self.max_new_tokens,
            batch_size=1,
        )
        return Reply(question=question, answer=answers[0], sources=list(hits), prompt_ids=prompt)

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoder.tokenizer.decode(list(ids), skip_special_tokens=False)


class Conversation:
    """A chat: every reply sees the earlier turns, exactly as multi-turn training examples carry them."""

    def __init__(self, assistant: Assistant) -> None:
        self.assistant = assistant
        self.history: list[Turn] = []

    def ask(self, question: str) -> Reply:
        reply = self.assistant.reply(question, self.history)
        self.history += [Turn("user", question), Turn("assistant", reply.answer)]
        return reply

    def reset(self) -> None:
        self.history.clear()
