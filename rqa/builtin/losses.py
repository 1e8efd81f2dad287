"""Built-in training losses.

A loss receives logits only at supervised positions (``[N, vocab]``) with their targets (``[N]``) and
``num_items``, the number of supervised tokens in the whole optimizer step (so gradient accumulation averages
correctly). ``supervise`` says which tokens the data pipeline labels: the answer, or the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rqa.hookspecs import hookimpl


@dataclass(frozen=True)
class CrossEntropyLoss:
    supervise: Literal["answer", "sequence"] = "answer"
    smoothing: float = 0.0

    def __call__(self, logits: Any, targets: Any, num_items: int | None = None) -> Any:
        import torch.nn.functional as F

        total = F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=self.smoothing)
        return total / (num_items if num_items else max(targets.numel(), 1))


def answer_ce() -> CrossEntropyLoss:
    """Mean cross-entropy over the answer tokens only (default)."""
    return CrossEntropyLoss("answer")


def sequence_ce() -> CrossEntropyLoss:
    """Mean cross-entropy over every non-padding token, prompt included."""
    return CrossEntropyLoss("sequence")


def label_smoothed_ce(smoothing: float = 0.1) -> CrossEntropyLoss:
    """Answer-token cross-entropy with label smoothing (option: smoothing)."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    return CrossEntropyLoss("answer", smoothing)


@hookimpl
def register_losses(register) -> None:
    register("answer-ce", answer_ce)
    register("sequence-ce", sequence_ce)
    register("label-smoothed-ce", label_smoothed_ce)
