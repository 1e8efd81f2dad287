"""``rqa plugin new`` templates for the kinds that work on the document database: retrievers, the losses that train
their embedder (``rqa train-retriever``) and ``rqa generate``'s passage filters. Placeholders as in
``rqa.scaffold.kinds``.
"""

from __future__ import annotations

from rqa.scaffold.templates import KindTemplate

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

PASSAGE_FILTER = KindTemplate(
    kind="passage_filters",
    summary="leaves out passages whose text occurs more than `max_copies` times in the database",
    usage="rqa generate --documents documents.jsonl --output_dir data --filter $name:max_copies=1",
    module='''"""$package: the rqa passage filter $name. Replace ``__call__`` with your test of a passage."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from rqa import hookimpl
from rqa.schema import Document


def _text(document: Document) -> str:
    return " ".join(document.page_content.lower().split())


class ${Class}Filter:
    """Called once per passage: True keeps it for question generation."""

    def __init__(self, documents: Sequence[Document], max_copies: int) -> None:
        self.max_copies = max_copies
        self.copies = Counter(_text(document) for document in documents)  # the whole database, seen once

    def __call__(self, document: Document) -> bool:
        return self.copies[_text(document)] <= self.max_copies


def $ident(documents: Sequence[Document], max_copies: int = 1) -> ${Class}Filter:
    """Removes passages whose text occurs more than max_copies times in the database (option: max_copies)."""
    if max_copies < 1:
        raise ValueError(f"max_copies must be at least 1, got {max_copies}")
    return ${Class}Filter(documents, max_copies)  # rqa passes ``documents`` because the factory declares it
''',
    test_imports=(
        "import pytest",
        "from rqa import contracts",
        "from rqa.errors import RqaError",
        "from rqa.plugins import load_plugins",
        "from rqa.schema import Document",
    ),
    test="""

DOCUMENTS = [Document("Descale the kettle every four weeks."), Document("Sign in"), Document("Sign  in")]


def test_the_filter_leaves_out_passages_repeated_in_the_database() -> None:
    keep = load_plugins()[KIND].build("$name", documents=DOCUMENTS)  # rqa builds it with the whole database
    assert contracts.missing(KIND, keep) == []
    assert [keep(document) for document in DOCUMENTS] == [True, False, False]
    assert all(map(load_plugins()[KIND].build("$name", {"max_copies": "2"}, documents=DOCUMENTS), DOCUMENTS))


def test_a_bad_option_is_refused() -> None:
    with pytest.raises(RqaError, match="max_copies must be at least 1"):
        load_plugins()[KIND].build("$name", {"max_copies": "0"}, documents=DOCUMENTS)
""",
)
