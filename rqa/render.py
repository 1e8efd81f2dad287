"""What a formatter makes of an example: the tokens a model reads, those it learns, and what each part costs.

Used by ``rqa render`` to debug prompts, and by ``rqa render --check`` to compare a preset formatter with
the tokenizer's own chat template: a preset that silently differs from the template a model was tuned with
costs accuracy without any error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rqa.data import IGNORE_INDEX, ExampleEncoder
from rqa.formatting import LOCALRQA_HEADER, Formatter, PrefixFormatter, passages_block
from rqa.schema import Document, Example

SUPERVISED_STYLE = "bold black on green"
PROMPT_STYLE = ""


def highlighted(tokenizer: Any, input_ids: Sequence[int], labels: Sequence[int]) -> Any:
    """A rich ``Text`` of the decoded ids, the supervised runs (labels not -100) styled."""
    from rich.text import Text

    text = Text()
    run: list[int] = []
    supervised = False
    for token, label in zip(input_ids, labels, strict=True):
        if run and (label != IGNORE_INDEX) != supervised:
            text.append(_decode(tokenizer, run), style=SUPERVISED_STYLE if supervised else PROMPT_STYLE)
            run = []
        supervised = label != IGNORE_INDEX
        run.append(token)
    if run:
        text.append(_decode(tokenizer, run), style=SUPERVISED_STYLE if supervised else PROMPT_STYLE)
    return text


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def instruction_text(formatter: Formatter) -> str:
    """The fixed instruction a formatter writes around the passages."""
    if isinstance(formatter, PrefixFormatter):
        return LOCALRQA_HEADER.format(documents="")
    return formatter.system_text([])


def part_counts(tokenizer: Any, formatter: Formatter, example: Example, total: int) -> list[tuple[str, int]]:
    """Tokens per part, each part tokenized alone (an approximation); ``format`` is the chat markup left over."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    answer = example.gold_answer + formatter.end_of_turn
    parts = [
        ("system (instruction)", count(instruction_text(formatter))),
        ("passages", count(passages_block(example.gold_docs))),
        ("history", sum(count(turn.content) for turn in example.chat_history)),
        ("question", count(example.question)),
        ("answer (with end of turn)", count(answer)),
    ]
    parts.append(("format (markup, the rest)", total - sum(n for _, n in parts)))
    return parts


@dataclass
class TemplateComparison:
    """A preset's generation prompt against the tokenizer's chat template for the same messages."""

    preset_text: str
    template_text: str
    preset_ids: list[int]
    template_ids: list[int]

    @property
    def identical(self) -> bool:
        return self.preset_text == self.template_text and self.preset_ids == self.template_ids

    @property
    def first_text_difference(self) -> int | None:
        return _first_difference(self.preset_text, self.template_text)

    @property
    def first_id_difference(self) -> int | None:
        return _first_difference(self.preset_ids, self.template_ids)


def _first_difference(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    for index, (x, y) in enumerate(zip(a, b)):  # noqa: B905 - lengths may differ on purpose
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def template_messages(tokenizer: Any, formatter: Formatter, example: Example, passages: Sequence[Document]) -> Any:
    """The example as chat messages, system = the formatter's system text (merged into the first user turn
    when the template refuses a system role, as Mistral's does)."""
    turns = [*example.chat_history]
    messages = [{"role": t.role, "content": t.content} for t in turns]
    messages.append({"role": "user", "content": example.question})
    system = formatter.system_text(passages)
    with_system = [{"role": "system", "content": system}, *messages]
    try:
        tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True)
        return with_system
    except Exception:
        first = messages[0]
        messages[0] = {"role": first["role"], "content": f"{system}\n\n{first['content']}"}
        return messages


def compare_with_template(encoder: ExampleEncoder, example: Example) -> TemplateComparison:
    """Render the generation prompt both ways; ids are compared untrimmed (``max_seq_length`` plays no part)."""
    tokenizer, formatter = encoder.tokenizer, encoder.formatter
    if not getattr(tokenizer, "chat_template", None):
        from rqa.errors import RqaError

        raise RqaError("the tokenizer has no chat template to compare with")
    passages = list(example.gold_docs)
    rendered = formatter.render(example, passages, with_answer=False)
    messages = template_messages(tokenizer, formatter, example, passages)
    template_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    template_ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    if isinstance(template_ids, dict) or hasattr(template_ids, "input_ids"):
        template_ids = template_ids["input_ids"]
    return TemplateComparison(
        preset_text=rendered.prompt,
        template_text=template_text,
        preset_ids=encoder.tokenize(rendered)[0],
        template_ids=list(template_ids),
    )


def context(text: str, at: int, width: int = 40) -> str:
    """``text`` around position ``at``, with ``⟦`` marking the position."""
    start = max(0, at - width)
    before, after = text[start:at], text[at : at + width]
    return ("…" if start else "") + before + "⟦" + after + ("…" if at + width < len(text) else "")
