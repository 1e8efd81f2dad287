"""From examples to token ids and labels, and from encoded examples to padded batches.

Pieces of a rendered example are tokenized one at a time and concatenated, for training and generation
alike, so the prompt ids match exactly. Labels are -100 everywhere the loss must not look; padding is masked
by position (pad may equal EOS). Over ``max_seq_length`` the passages are trimmed first, then the oldest
history; an example is dropped only when its answer alone cannot fit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from rqa.errors import RqaError
from rqa.formatting import Formatter, Piece, Rendered
from rqa.schema import Document, Example

log = logging.getLogger("rqa")
IGNORE_INDEX = -100
Supervise = Literal["answer", "sequence"]


@dataclass
class EncodeStats:
    kept: int = 0
    trimmed: int = 0
    dropped: list[str] = field(default_factory=list)


class ExampleEncoder:
    """Renders with a formatter and tokenizes into ``input_ids`` and ``labels``."""

    def __init__(
        self,
        tokenizer: Any,
        formatter: Formatter,
        max_seq_length: int = 2048,
        supervise: Supervise = "answer",
        supervise_history: bool = False,
    ) -> None:
        self.tokenizer, self.formatter = tokenizer, formatter
        self.max_seq_length = max_seq_length
        self.supervise, self.supervise_history = supervise, supervise_history
        self._cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(self._cache) < 100_000:
                self._cache[text] = ids
        return ids

    def _labelled(self, piece: Piece) -> bool:
        if self.supervise == "sequence" or piece.kind == "answer":
            return True
        return piece.kind == "reply" and self.supervise_history

    def tokenize(self, rendered: Rendered) -> tuple[list[int], list[int]]:
        input_ids: list[int] = []
        labels: list[int] = []
        for piece in rendered.pieces:
            ids = self._ids(piece.text)
            input_ids += ids
            labels += ids if self._labelled(piece) else [IGNORE_INDEX] * len(ids)
        return input_ids, labels

    def prompt_ids(self, example: Example, passages: Sequence[Document]) -> list[int]:
        """The ids generation starts from: the same pieces without the answer, trimmed like training's."""
        fitted = self._fit(example, passages, with_answer=False)
        if fitted is None:  # the question alone is too long: keep its end, where the model continues
            rendered = self.formatter.render(replace(example, chat_history=()), [], with_answer=False)
            return self.tokenize(rendered)[0][-self.max_seq_length :]
        return fitted[0]

    def encode(self, example: Example, passages: Sequence[Document] | None = None) -> dict[str, Any] | None:
        """``{"input_ids", "labels"}`` for training, or None when the answer alone cannot fit."""
        fitted = self._fit(example, example.gold_docs if passages is None else passages, with_answer=True)
        if fitted is None:
            return None
        input_ids, labels, trimmed = fitted
        if all(label == IGNORE_INDEX for label in labels):
            raise RqaError(f"{example.source}: the rendered example has no supervised tokens")
        return {"input_ids": input_ids, "labels": labels, "trimmed": trimmed}

    def _fit(
        self, example: Example, passages: Sequence[Document], with_answer: bool
    ) -> tuple[list[int], list[int], bool] | None:
        passages = list(passages)
        history = list(example.chat_history)
        trimmed = False
        for _ in range(64 + 2 * len(history) + 4 * len(passages)):
            current = replace(example, chat_history=tuple(history))
            input_ids, labels = self.tokenize(self.formatter.render(current, passages, with_answer=with_answer))
            excess = len(input_ids) - self.max_seq_length
            if excess <= 0:
                return input_ids, labels, trimmed
            trimmed = True
            if passages:
                lengths = [len(self._ids(p.text)) for p in passages]
                longest = lengths.index(max(lengths))
                shortened = self._shorten(passages[longest], excess + 4)
                if shortened is None:
                    del passages[longest]
                else:
                    passages[longest] = shortened
            elif history:
                # drop the oldest exchange: a user turn and the reply that follows it
                history = history[2:] if len(history) > 1 and history[1].role == "assistant" else history[1:]
            else:
                return None
        return None

    def _shorten(self, document: Document, tokens: int) -> Document | None:
        """The passage less its last ``tokens`` tokens, or None when nothing would be left."""
        ids = self._ids(document.text)
        if len(ids) <= tokens:
            return None
        kept = self.tokenizer.decode(ids[: len(ids) - tokens])
        return Document(page_content=document.page_content, fmt_content=kept, metadata=document.metadata)

    def encode_all(
        self,
        examples: Sequence[Example],
        passages: Callable[[Example, int], Sequence[Document]] | None = None,
    ) -> tuple[list[dict[str, Any]], EncodeStats]:
        """Encode every example (with ``passages(example, index)`` as its context, default its gold ones)."""
        stats = EncodeStats()
        encoded: list[dict[str, Any]] = []
        for index, example in enumerate(examples):
            item = self.encode(example, passages(example, index) if passages else None)
            if item is None:
                stats.dropped.append(example.source)
                continue
            stats.kept += 1
            stats.trimmed += int(item.pop("trimmed"))
            encoded.append(item)
        if stats.trimmed or stats.dropped:
            log.warning(
                "max_seq_length %d: trimmed passages or history in %d examples, dropped %d whose answer "
                "alone does not fit%s",
                self.max_seq_length,
                stats.trimmed,
                len(stats.dropped),
                f" (first: {stats.dropped[0]})" if stats.dropped else "",
            )
        return encoded, stats


class PaddingCollator:
    """Pads a batch to its longest row (right side), labels with -100, attention mask by position."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": torch.full((len(features), longest), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(features), longest), dtype=torch.long),
            "labels": torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long),
        }
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            batch["input_ids"][row, :n] = torch.tensor(feature["input_ids"])
            batch["attention_mask"][row, :n] = 1
            batch["labels"][row, :n] = torch.tensor(feature["labels"])
        return batch


class PackingCollator:
    """Concatenates a batch into one row with restarting ``position_ids`` and no attention mask.

    No padding is computed at all. Attention kernels keep the examples apart: flash-attention's variable-length
    kernels through the example boundaries passed along (``cu_seq_lens_*``, ``max_length_*``, the names
    transformers forwards to them, known here so no layer reads them back from the GPU), SDPA and eager through
    the block-diagonal mask transformers derives from the position ids. The first label of every example is
    masked, so no example learns from its neighbour.

    ``pad_to_multiple_of`` rounds the row up with one extra, unlabelled example of padding tokens. On a GPU a
    small model's step is bound by launching kernels, and every new row length makes each matrix product look up
    its kernel afresh; a handful of lengths repeat instead.
    """

    def __init__(self, pad_token_id: int = 0, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        input_ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        boundaries = [0]
        lengths = [len(feature["input_ids"]) for feature in features]
        for feature, n in zip(features, lengths, strict=True):
            input_ids += feature["input_ids"]
            labels += [IGNORE_INDEX, *feature["labels"][1:]]
            positions += range(n)
            boundaries.append(boundaries[-1] + n)
        padding = -boundaries[-1] % self.pad_to_multiple_of if self.pad_to_multiple_of else 0
        if padding:
            input_ids += [self.pad_token_id] * padding
            labels += [IGNORE_INDEX] * padding
            positions += range(padding)
            boundaries.append(boundaries[-1] + padding)
            lengths.append(padding)
        cumulative = torch.tensor(boundaries, dtype=torch.int32)
        longest = max(lengths)
        return {
            "input_ids": torch.tensor([input_ids]),
            "position_ids": torch.tensor([positions]),
            "labels": torch.tensor([labels]),
            "cu_seq_lens_q": cumulative,
            "cu_seq_lens_k": cumulative,
            "max_length_q": longest,
            "max_length_k": longest,
        }
