"""The two prompts of ``rqa generate`` and reading questions back out of a generator's reply.

Prompts are plain text files a user can replace (``--question_prompt``, ``--answer_prompt``); the defaults ship in
``rqa/generate/prompts/``. Placeholders are filled by plain replacement rather than ``str.format``, so a prompt may
hold other braces (a JSON example, say) without escaping them. A prompt without a placeholder it needs fails before
anything loads: generating hundreds of rows from a prompt that never shows the passage wastes an hour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rqa.errors import RqaError

# placeholder -> whether the prompt must contain it
QUESTION_PLACEHOLDERS = {"{passage}": True, "{num_questions}": False}
ANSWER_PLACEHOLDERS = {"{passage}": True, "{question}": True}

_NUMBERING = re.compile(r"^\s*(?:[-*•]\s*)?(?:\**\s*(?:question|q)\s*\d*\s*[:.)-]\**|\d+\s*[:.)-])\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Prompts:
    """The question and answer prompt texts, and where each came from (a path, or ``default``)."""

    question: str
    answer: str
    question_source: str = "default"
    answer_source: str = "default"

    def question_messages(self, passage: str, num_questions: int) -> list[dict[str, str]]:
        text = fill(self.question, {"{passage}": passage, "{num_questions}": str(num_questions)})
        return [{"role": "user", "content": text}]

    def answer_messages(self, passage: str, question: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": fill(self.answer, {"{passage}": passage, "{question}": question})}]


def default_prompt(name: str) -> str:
    """A shipped prompt (``question`` or ``answer``), read from the package's data."""
    return resources.files("rqa.generate").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8")


def load_prompts(question_file: str | None = None, answer_file: str | None = None) -> Prompts:
    """The prompts to use: each file given replaces its default; both are checked for their placeholders."""
    question = _read(question_file) if question_file else default_prompt("question")
    answer = _read(answer_file) if answer_file else default_prompt("answer")
    check_placeholders(question, QUESTION_PLACEHOLDERS, question_file or "the default question prompt")
    check_placeholders(answer, ANSWER_PLACEHOLDERS, answer_file or "the default answer prompt")
    return Prompts(question, answer, question_file or "default", answer_file or "default")


def _read(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RqaError(f"{path}: cannot be read as a prompt file ({error})") from None
    if not text.strip():
        raise RqaError(f"{path}: the prompt file is empty")
    return text


def check_placeholders(text: str, placeholders: dict[str, bool], where: str) -> None:
    """Every required placeholder must appear, so the generator sees the passage (and the question)."""
    missing = [name for name, required in placeholders.items() if required and name not in text]
    if missing:
        known = ", ".join(placeholders)
        raise RqaError(
            f"{where}: the prompt needs the placeholder {' and '.join(missing)}, which it does not contain "
            f"(placeholders it may use: {known})"
        )


def fill(text: str, values: dict[str, str]) -> str:
    """Each placeholder replaced by its value, in one pass: a passage that contains ``{question}`` stays as it is."""
    pattern = re.compile("|".join(re.escape(name) for name in values))
    return pattern.sub(lambda match: values[match.group(0)], text.strip())


def parse_questions(reply: str, limit: int) -> list[str]:
    """Up to ``limit`` distinct questions from a reply: one per line, numbering (``Question 2:``, ``2.``) removed.

    A line counts if it ends with a question mark (after stray quotes and emphasis) or is numbered as a question
    (small models often write "Question 1: How to ship to Canada" without one): preambles ("Sure! Here are two
    questions:") and answers must not become questions.
    """
    found: list[str] = []
    for line in reply.splitlines():
        numbered = _NUMBERING.match(line)
        text = _NUMBERING.sub("", line).strip().strip("*\"'` ").strip()
        if len(text) < 2 or not (text.endswith("?") or (numbered and len(text.split()) >= 3)):
            continue
        if text.lower() not in {q.lower() for q in found}:
            found.append(text)
        if len(found) == limit:
            break
    return found
