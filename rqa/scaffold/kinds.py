"""What ``rqa plugin new`` writes for each kind: one working component, its hook, and a test of both.

Each template is the code a plugin author starts from, so it follows CONTRIBUTING.md: factories registered by
name, heavy libraries imported inside the factory or method that needs them, options checked with
``ValueError``. ``$name`` is the component (and plugin) name, ``$package`` the distribution, ``$Class`` and
``$ident`` the Python names made from it, ``$key`` a metric's key (``string.Template`` placeholders).
"""

from __future__ import annotations

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


@hookimpl
def register_metrics(register) -> None:
    register("$name", $ident)
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


@hookimpl
def register_losses(register) -> None:
    register("$name", $ident)
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


@hookimpl
def register_formatters(register) -> None:
    register("$name", $ident)
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

RETRIEVER = KindTemplate(
    kind="retrievers",
    summary="ranks passages by how many distinct query words they contain (no model)",
    usage="rqa index --documents documents.jsonl --index index --retriever $name",
    module='''"""$package: the rqa retriever $name. Replace ``index`` and ``retrieve`` with your method."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rqa import hookimpl
from rqa.indexing import IndexedRetriever
from rqa.schema import Document, fingerprint_documents


class ${Class}Retriever(IndexedRetriever):
    """rqa's ``IndexedRetriever.build`` reuses a matching index, rebuilds a stale one and writes atomically."""

    name = "$name"
    index_files = ("words.json",)

    def __init__(self, lowercase: bool = True) -> None:
        super().__init__()
        self.lowercase = lowercase
        self.words: list[set[str]] = []

    def _words(self, text: str) -> set[str]:
        return set(re.findall(r"\\w+", text.lower() if self.lowercase else text))

    def manifest(self, documents: Sequence[Document]) -> dict[str, Any]:
        """Everything that changes the index: a different value means a rebuild."""
        return {
            "retriever": self.name,
            "lowercase": self.lowercase,
            "num_documents": len(documents),
            "fingerprint": fingerprint_documents(list(documents)),
        }

    def index(self, documents: Sequence[Document], progress: bool) -> None:
        self.words = [self._words(document.text) for document in documents]

    def save(self, directory: Path) -> None:
        (directory / "words.json").write_text(json.dumps([sorted(words) for words in self.words]))

    def load(self, directory: Path, expected: dict[str, Any]) -> str | None:
        words = json.loads((directory / "words.json").read_text())
        if len(words) != len(self.documents):
            return "it holds a different number of documents"
        self.words = [set(w) for w in words]
        return None

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[tuple[Document, float]]]:
        results = []
        for query in queries:
            wanted = self._words(query)
            scores = [len(wanted & words) for words in self.words]
            best = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
            results.append([(self.documents[i], float(scores[i])) for i in best])
        return results


def $ident(lowercase: bool = True) -> ${Class}Retriever:
    """Distinct query words found in each passage (no model, no download)."""
    return ${Class}Retriever(lowercase)


@hookimpl
def register_retrievers(register) -> None:
    register("$name", $ident)
''',
    test_imports=(
        "from rqa import contracts",
        "from rqa.plugins import load_plugins",
        "from rqa.schema import Document",
    ),
    test="""

DOCUMENTS = [Document("The capital of France is Paris."), Document("Berlin is in Germany."), Document("Rome.")]


def test_the_retriever_indexes_reuses_and_retrieves(tmp_path) -> None:
    assert built().build(DOCUMENTS, tmp_path / "index") is True  # built
    retriever = built()
    assert retriever.build(DOCUMENTS, tmp_path / "index") is False  # the saved index matches: reused
    (hits,) = retriever.retrieve(["capital of France"], 2)
    assert hits[0][0].page_content == DOCUMENTS[0].page_content
    assert len(hits) == 2 and hits[0][1] >= hits[1][1]
""",
)

RETRIEVER_LOSS = KindTemplate(
    kind="retriever_losses",
    summary="in-batch negatives with a temperature, for `rqa train-retriever`",
    usage="rqa train-retriever --train_file train.jsonl --loss $name --loss_option temperature=0.05",
    module='''"""$package: the rqa retriever loss $name.

Any ``torch.nn.Module`` that keeps the model it trains as ``model`` fits; this one is sentence-transformers'.
"""

from __future__ import annotations

from typing import Any

from rqa import hookimpl


def $ident(model: Any, temperature: float = 0.05) -> Any:
    """In-batch negatives: each question against every passage of its batch (option: temperature)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be above 0, got {temperature}")
    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    return MultipleNegativesRankingLoss(model, scale=1.0 / temperature)


@hookimpl
def register_retriever_losses(register) -> None:
    register("$name", $ident)
''',
    test_imports=("from rqa import contracts", "from rqa.plugins import load_plugins"),
    test="""

def test_the_loss_scores_a_batch_of_questions_and_passages() -> None:
    from rqa.models import resolve_embedder
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_embedder(None))  # rqa's embedded embedder: no download
    loss = load_plugins()[KIND].build("$name", model=model)
    assert contracts.missing(KIND, loss) == [] and loss.model is model
    features = [model.tokenize(["capital of France?", "river in Rome?"]), model.tokenize(["Paris.", "The Tiber."])]
    value = loss(features, None)
    assert value.dim() == 0 and value.item() > 0
""",
)

TEMPLATES: dict[str, KindTemplate] = {
    "metric": METRIC,
    "loss": LOSS,
    "formatter": FORMATTER,
    "retriever": RETRIEVER,
    "retriever_loss": RETRIEVER_LOSS,
}
