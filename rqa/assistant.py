"""Answering questions with a trained model, as ``rqa ask`` and ``rqa chat`` do.

A question goes through exactly the path training and evaluation use: retrieve ``top_k`` passages for the
latest question, build an ``Example`` (history included), take ``ExampleEncoder.prompt_ids`` and generate with
``generate_answers``. A model trained on these prompts is therefore asked in the format it learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rqa import assembly
from rqa.assembly import RunSettings
from rqa.errors import RqaError
from rqa.schema import Document, Example, Turn

Hit = tuple[Document, float]
AssistantSettings = RunSettings  # what ``Assistant.load`` takes (the name earlier code imports)


def resolve_settings(model: str | None, **options: Any) -> RunSettings:
    """``rqa.assembly.resolve_settings`` (same keywords) for an assistant, which needs a database that exists.

    Its model loads as saved (transformers' default attention), whatever attention the run trained with.
    """
    settings = assembly.resolve_settings(model, **{**options, "use_flash_attention": False})
    if not settings.documents:
        raise RqaError("no document database: pass --documents (JSONL or LocalRQA .pkl)")
    if not Path(settings.documents).exists():
        raise RqaError(f"{settings.documents} does not exist; pass --documents")
    return settings


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
    def load(cls, settings: RunSettings) -> Assistant:
        """Check the names first, then load the database and index, then the model (``rqa.assembly``)."""
        from rqa.pipeline import check_all

        chosen = check_all(settings.checks("formatter", "retriever", "generator"))
        retriever = assembly.build_retriever(settings, chosen["retriever"])
        generation = assembly.build_generation(settings, chosen["generator"], chosen["formatter"])
        return cls(
            generation.model,
            generation.encoder,
            retriever,
            settings.top_k,
            settings.max_new_tokens,
            generator=generation.backend,
        )

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
