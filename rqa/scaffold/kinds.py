"""What ``rqa plugin new`` writes for each kind: one working component, its hook, and a test of both.

This module holds the kinds a training run assembles (metrics, losses, formatters) and ``TEMPLATES``, every kind
by its ``--kind`` name; ``rqa.scaffold.database_kinds`` those that work on the document database.

Each template is the code a plugin author starts from, so it follows CONTRIBUTING.md: factories registered by
name, heavy libraries imported inside the factory or method that needs them, options checked with
``ValueError``. ``$name`` is the component (and plugin) name, ``$package`` the distribution, ``$Class`` and
``$ident`` the Python names made from it, ``$key`` a metric's key (``string.Template`` placeholders).
"""

from __future__ import annotations

from rqa.scaffold.database_kinds import PASSAGE_FILTER, RETRIEVER, RETRIEVER_LOSS
from rqa.scaffold.templates import KindTemplate

METRIC = KindTemplate(
    kind="metrics",
    summary="`$key`, the share of answers equal to the gold answer after SQuAD normalisation",
    usage="rqa evaluate --model RUN --data test.jsonl --metrics $name token-f1 --output_dir out",
    module='''"""$package: the rqa metric $name ($key). Replace ``per_row`` with your score."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rqa import hookimpl
from rqa.builtin.metrics import Metric
from rqa.contracts import KeyInfo
from rqa.scoring import normalize_answer


class ${Class}Metric(Metric):
    """One score per prediction row; rqa averages it over the questions and bootstraps its interval."""

    metadata: Mapping[str, KeyInfo] = {
        "$key": KeyInfo("share of answers equal to the gold answer (SQuAD-normalised)", headline=True),
    }

    def per_row(self, row: dict[str, Any]) -> dict[str, float]:
        same = normalize_answer(row["generated_answer"]) == normalize_answer(row["gold_answer"])
        return {"$key": float(same)}


def $ident() -> ${Class}Metric:
    """$key: share of answers equal to the gold answer (SQuAD-normalised)."""
    return ${Class}Metric()
''',
    test_imports=("import pytest", "from rqa import contracts", "from rqa.plugins import load_plugins"),
    test="""

def test_the_metric_scores_prediction_rows() -> None:
    metric = built()
    metric.update(
        [
            {"generated_answer": "The Paris!", "gold_answer": "paris"},
            {"generated_answer": "Berlin", "gold_answer": "Paris"},
        ]
    )
    assert metric.compute() == {"$key": pytest.approx(0.5)}
    assert isinstance(metric, contracts.SupportsMetadata) and metric.metadata["$key"].headline
""",
)

LOSS = KindTemplate(
    kind="losses",
    summary="cross-entropy over the answer tokens with label smoothing (option `smoothing`)",
    usage="rqa train --train_file train.jsonl --loss $name --loss_option smoothing=0.1",
    module='''"""$package: the rqa loss $name. Replace ``__call__`` with your loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rqa import hookimpl


@dataclass(frozen=True)
class ${Class}Loss:
    """Receives logits ``[N, vocab]`` and targets ``[N]`` at the N supervised tokens of a micro-batch."""

    smoothing: float = 0.0
    supervise: str = "answer"  # which tokens get labels: "answer" or "sequence"

    def __call__(self, logits: Any, targets: Any, num_items: int | None = None) -> Any:
        import torch.nn.functional as F

        total = F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=self.smoothing)
        # num_items counts the whole optimizer step's supervised tokens: gradient accumulation averages right
        return total / (num_items if num_items else max(targets.numel(), 1))


def $ident(smoothing: float = 0.0) -> ${Class}Loss:
    """Cross-entropy over the answer tokens with label smoothing (option: smoothing, in [0, 1))."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    return ${Class}Loss(smoothing)
''',
    test_imports=(
        "import pytest",
        "from rqa import contracts",
        "from rqa.errors import RqaError",
        "from rqa.plugins import load_plugins",
    ),
    test="""

def test_the_loss_is_cross_entropy_without_smoothing() -> None:
    torch = pytest.importorskip("torch")
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 2, 3, 4, 5])
    expected = torch.nn.functional.cross_entropy(logits, targets)
    assert built()(logits, targets).item() == pytest.approx(expected.item())
    assert built(smoothing="0.1")(logits, targets, num_items=5).item() != pytest.approx(expected.item())


def test_a_bad_option_is_refused() -> None:
    with pytest.raises(RqaError, match="smoothing must be in"):
        built(smoothing="1.5")
""",
)

FORMATTER = KindTemplate(
    kind="formatters",
    summary="passages, then `Q: ... A: ...` lines, each answer ending with a newline",
    usage="rqa render --train_file train.jsonl --formatter $name",
    module='''"""$package: the rqa formatter $name. Replace ``render`` with your model family's format."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rqa import hookimpl
from rqa.formatting import Formatter, Piece, Rendered
from rqa.schema import Document, Example


class ${Class}Formatter(Formatter):
    """Pieces are tokenized one by one: "prompt" is read, "reply" and "answer" are learnt."""

    end_of_turn = "\\n"  # generation stops on it

    def __init__(self, bos: str = "") -> None:
        self.bos = bos

    def render(self, example: Example, passages: Sequence[Document], with_answer: bool = True) -> Rendered:
        pieces = [Piece(self.bos + self.system_text(passages) + "\\n\\n", "prompt")]
        for turn in example.chat_history:
            if turn.role == "user":
                pieces.append(Piece(f"Q: {turn.content}\\nA:", "prompt"))
            else:
                pieces.append(Piece(f" {turn.content}{self.end_of_turn}", "reply"))
        pieces.append(Piece(f"Q: {example.question}\\nA:", "prompt"))
        if with_answer:
            pieces.append(Piece(f" {example.gold_answer}{self.end_of_turn}", "answer"))
        return Rendered(tuple(pieces))


def $ident(tokenizer: Any = None) -> ${Class}Formatter:
    """Plain 'Q: ... A: ...' lines after the passages; BOS when the tokenizer has one."""
    adds_bos = tokenizer is not None and tokenizer.bos_token_id is not None
    return ${Class}Formatter(bos=tokenizer.bos_token if adds_bos else "")
''',
    test_imports=(
        "from rqa import contracts",
        "from rqa.plugins import load_plugins",
        "from rqa.schema import Document, Example, Turn",
    ),
    test="""

EXAMPLE = Example(
    question="What is the capital of France?",
    gold_answer="Paris",
    gold_docs=(Document("The capital of France is Paris."),),
    chat_history=(Turn("user", "Hello"), Turn("assistant", "Hi!")),
)


def test_the_formatter_renders_prompt_reply_and_answer() -> None:
    formatter = built()
    rendered = formatter.render(EXAMPLE, EXAMPLE.gold_docs, with_answer=True)
    kinds = [piece.kind for piece in rendered.pieces]
    assert "reply" in kinds and kinds[-1] == "answer" and kinds.count("answer") == 1
    assert rendered.answer.endswith(formatter.end_of_turn)
    assert "Paris." in rendered.prompt and "Hello" in rendered.prompt
    # generation starts from exactly the prompt the model was trained on
    assert formatter.render(EXAMPLE, EXAMPLE.gold_docs, with_answer=False).prompt == rendered.prompt
""",
)

TEMPLATES: dict[str, KindTemplate] = {
    "metric": METRIC,
    "loss": LOSS,
    "formatter": FORMATTER,
    "retriever": RETRIEVER,
    "retriever_loss": RETRIEVER_LOSS,
    "passage_filter": PASSAGE_FILTER,
}
