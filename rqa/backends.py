"""Generator backends: the one seam between rqa's core and whatever produces text.

A backend is a registry component (kind ``generators``, hook ``register_generators``) that satisfies
``rqa.contracts.Generator``: ``answer(examples, passages, max_new_tokens)`` for retrieval-augmented answers and
``chat(conversations, max_new_tokens)`` for free-form messages. ``hf`` generates with a local transformers model
(``rqa.generation``'s batched greedy path); ``openai`` sends chat completions to any OpenAI-compatible endpoint,
``rqa serve`` included. Commands name one with ``--generator NAME[:key=value,...]``.

How a question travels as chat messages (``messages_for``): the system message holds rqa's instruction and the
passages (``Formatter.system_text``), earlier turns follow as user/assistant messages, and the question is the
last user message. ``rqa serve`` reverses this (``example_from_messages``): the latest user message is the
question, the turns before it its history, and system messages are left out, because the served run's formatter
writes its own system turn, as in training. So that a served model answers exactly as ``hf`` would, the
``openai`` backend also sends the passages themselves (the extra request field ``passages``) to an rqa server,
which then renders the run's prompt over them instead of retrieving: the same prompt ids, the same greedy answer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rqa.errors import RqaError
from rqa.schema import Document, Example, Turn

if TYPE_CHECKING:
    from rqa.contracts import Generator
    from rqa.evaluation import E2EEvaluator
    from rqa.pipeline import ComponentChoice

DEFAULT_GENERATOR = "hf"
Message = Mapping[str, str]


def choose_generator(spec: str, option_pairs: Sequence[str] = ()) -> ComponentChoice:
    """Resolve ``NAME[:key=value,...]`` against the generator registry; checks options before anything loads.

    Unlike other kinds, every factory argument of a generator is a user option (``model`` included).
    """
    from rqa.pipeline import ComponentChoice
    from rqa.plugins import get_plugins
    from rqa.registry import parse_component_spec, validate_options

    name, options = parse_component_spec(spec, list(option_pairs))
    component = get_plugins()["generators"].get(name)
    return ComponentChoice("generators", name, validate_options(component, options))


def build_generator(spec: str, option_pairs: Sequence[str] = ()) -> Generator:
    """A generator backend by name with its options, checked against ``rqa.contracts.Generator``."""
    return choose_generator(spec, option_pairs).build()


def is_local(spec: str | None) -> bool:
    """Whether ``spec`` names the local ``hf`` backend (commands then load the model from their own options)."""
    return spec is None or spec.partition(":")[0].strip() == DEFAULT_GENERATOR


def messages_for(example: Example, system_text: str) -> list[dict[str, str]]:
    """An example as chat messages: system text (instruction and passages), history, then the question."""
    messages = [{"role": "system", "content": system_text}] if system_text else []
    messages += [{"role": turn.role, "content": turn.content} for turn in example.chat_history]
    return [*messages, {"role": "user", "content": example.question}]


def example_from_messages(messages: Any) -> Example:
    """The question (the latest user message) and its history from chat messages; system messages are left out.

    Raises ``RqaError`` with a message a client can act on when the messages are not a conversation.
    """
    if not isinstance(messages, list) or not messages:
        raise RqaError("'messages' must be a non-empty list of {role, content} objects")
    turns: list[Turn] = []
    for position, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RqaError(f"messages[{position}] must be an object with 'role' and 'content'")
        role, content = message.get("role"), _content_text(message.get("content"), position)
        if role == "system" or role == "developer":
            continue
        if role not in ("user", "assistant"):
            raise RqaError(f"messages[{position}].role must be system, user or assistant, got {role!r}")
        turns.append(Turn(role, content))
    if not turns or turns[-1].role != "user" or not turns[-1].content.strip():
        raise RqaError("the last message must be a non-empty user message: the question to answer")
    return Example(question=turns[-1].content, gold_answer="", gold_docs=(), chat_history=tuple(turns[:-1]))


def _content_text(content: Any, position: int) -> str:
    """A message's text: a string, or OpenAI's list of content parts (text parts joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise RqaError(f"messages[{position}].content must be a string or a list of text parts")


def documents_from_json(value: Any) -> list[Document]:
    """Passages sent in a request (``page_content``, optional ``fmt_content`` and ``metadata``)."""
    from rqa.schema import parse_document

    if not isinstance(value, list):
        raise RqaError("'passages' must be a list of documents ({page_content, fmt_content, metadata})")
    try:
        return [parse_document(item, ("request", 0), f"passages[{i}]") for i, item in enumerate(value)]
    except RqaError as error:
        raise RqaError(str(error).removeprefix("request:0: ")) from None


def evaluate_with_generator(evaluator: E2EEvaluator, generator: Generator, name: str = "") -> dict[str, float]:
    """``E2EEvaluator.evaluate_model`` for any backend: the same retrieval, examples, rows, metrics and files.

    Questions go to the backend a batch (``evaluator.batch_size``) at a time; each question's generation time is
    its batch's time divided by its size, as for the local path.
    """
    from rqa.evaluation import prediction_row, score_rows, write_results
    from rqa.progress import log_finished, progress_bars

    began = time.perf_counter()
    label = f"evaluation {name}".strip()
    examples = list(evaluator.examples)
    with progress_bars(quiet=evaluator.quiet) as bars:
        retrieving = None
        if evaluator.retriever is not None:
            retrieving = bars.add(f"{label}: retrieving passages", len(examples), "questions")
        retrieved = evaluator.retrieve(progress=retrieving)
        progress = bars.add(f"{label}: generating answers", len(examples), "answers")
        answers: list[str] = []
        seconds: list[float] = []
        step = max(evaluator.batch_size, 1)
        for begin in range(0, len(examples), step):
            chunk = examples[begin : begin + step]
            passages = [[doc for doc, _ in hits] for hits in retrieved.passages[begin : begin + step]]
            started = time.perf_counter()
            answers += generator.answer(chunk, passages, evaluator.max_new_tokens)
            seconds += [(time.perf_counter() - started) / len(chunk)] * len(chunk)
            progress(len(chunk))
    per_question = retrieved.seconds_per_question
    rows = [
        prediction_row(example, retrieved.passages[i], answers[i], per_question, seconds[i])
        for i, example in enumerate(examples)
    ]
    scores = score_rows(rows, evaluator.metrics)
    if evaluator.output_dir is not None:
        write_results(Path(evaluator.output_dir), name, rows, scores)
    log_finished(label, len(examples), "questions", "answered", time.perf_counter() - began)
    return scores


def remote_generator(spec: str | None) -> ComponentChoice | None:
    """The backend a command's ``--generator`` names, checked before anything loads; None for ``hf``.

    Commands that load a local model (``evaluate``, ``ask``, ``chat``) take its settings from their own options
    (``--model``, ``--formatter``, ...), so ``hf`` there takes no options of its own.
    """
    if is_local(spec):
        if spec and spec.partition(":")[2].strip():
            raise RqaError("--generator hf takes no options here: use --model, --formatter and the other options")
        return None
    return choose_generator(spec or DEFAULT_GENERATOR)
