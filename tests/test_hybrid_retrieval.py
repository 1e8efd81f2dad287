"""The ``hybrid`` retriever: members' rankings fused by reciprocal rank, their indexes kept in one directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import document

from rqa.errors import ComponentOptionError, RqaError, UnknownComponentError
from rqa.fusion import HybridRetriever
from rqa.indexing import MANIFEST, IndexedRetriever
from rqa.models import DEFAULT_EMBEDDER
from rqa.plugins import get_plugins
from rqa.schema import Document

RQA = Path(sys.executable).parent / "rqa"
PASSAGES = {
    "a": "Descale the kettle every four weeks with white vinegar.",
    "b": "Sourdough rises thanks to a starter of wild yeast.",
    "c": "Jupiter is the largest planet of the solar system.",
    "d": "Income tax returns are due in mid April.",
    "e": "The ZX-4411 router blinks amber while its firmware updates.",
}


class Canned(IndexedRetriever):
    """A member that ranks every query the same way, and keeps its 'index' as a file of that ranking."""

    index_files = ("ranking.json",)

    def __init__(self, name: str, ranking: Sequence[str]) -> None:
        super().__init__()
        self.name, self.ranking = name, list(ranking)
        self.loaded: list[str] | None = None

    def manifest(self, documents: Sequence[Document]) -> dict[str, Any]:
        return {"retriever": self.name, "ranking": self.ranking, "num_documents": len(documents)}

    def index(self, documents: Sequence[Document], progress: bool) -> None:
        self.loaded = self.ranking

    def save(self, directory: Path) -> None:
        (directory / "ranking.json").write_text(json.dumps(self.ranking))

    def load(self, directory: Path, expected: dict[str, Any]) -> str | None:
        self.loaded = json.loads((directory / "ranking.json").read_text())
        return None

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[tuple[Document, float]]]:
        by_text = {d.page_content: d for d in self.documents}
        hits = [(by_text[PASSAGES[key]], 1.0 / rank) for rank, key in enumerate(self.loaded[:k], start=1)]
        return [hits for _ in queries]


def documents() -> list[Document]:
    return [document(text, key) for key, text in PASSAGES.items()]


def keys(hits: list[tuple[Document, float]]) -> list[str]:
    return [document.metadata["title"] for document, _ in hits]


def test_ranks_are_fused_by_reciprocal_rank() -> None:
    hybrid = HybridRetriever({"x": Canned("x", "abcd"), "y": Canned("y", "cae")}, [1.0, 1.0], rank_constant=60)
    hybrid.build(documents())
    hits = hybrid.retrieve(["any question"], 5)[0]
    # a: 1/61 + 1/62, c: 1/63 + 1/61, b: 1/62, e: 1/63, d: 1/64
    assert keys(hits) == ["a", "c", "b", "e", "d"]
    assert [score for _, score in hits] == pytest.approx([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62, 1 / 63, 1 / 64])
    assert keys(hybrid.retrieve(["any question"], 2)[0]) == ["a", "c"]


def test_weights_scale_each_members_say() -> None:
    ignoring_y = HybridRetriever({"x": Canned("x", "abcd"), "y": Canned("y", "edc")}, [1.0, 0.0])
    ignoring_y.build(documents())
    assert keys(ignoring_y.retrieve(["q"], 4)[0]) == ["a", "b", "c", "d"]
    trusting_y = HybridRetriever({"x": Canned("x", "abcd"), "y": Canned("y", "edc")}, [1.0, 3.0], rank_constant=1)
    trusting_y.build(documents())
    assert keys(trusting_y.retrieve(["q"], 3)[0]) == ["e", "d", "c"]


def test_members_indexes_live_in_one_directory_under_one_manifest(tmp_path: Path) -> None:
    index = tmp_path / "index"
    first = HybridRetriever({"x": Canned("x", "abc"), "y": Canned("y", "cba")}, [1.0, 1.0])
    assert first.build(documents(), index) is True
    manifest = json.loads((index / MANIFEST).read_text())
    assert manifest["retriever"] == "hybrid"
    assert manifest["members"]["y"] == {"retriever": "y", "ranking": list("cba"), "num_documents": 5}
    assert json.loads((index / "x" / "ranking.json").read_text()) == list("abc")

    again = HybridRetriever({"x": Canned("x", "abc"), "y": Canned("y", "cba")}, [1.0, 1.0])
    assert again.build(documents(), index) is False  # reused, each member loaded from its folder
    assert again.members["y"].loaded == list("cba")

    changed = HybridRetriever({"x": Canned("x", "abc"), "y": Canned("y", "bca")}, [1.0, 1.0])
    assert changed.build(documents(), index, rebuild="auto") is True  # one member changed: the pair is rebuilt
    assert json.loads((index / "y" / "ranking.json").read_text()) == list("bca")


def test_a_member_folder_gone_missing_means_a_rebuild(tmp_path: Path) -> None:
    index = tmp_path / "index"
    HybridRetriever({"x": Canned("x", "abc"), "y": Canned("y", "cba")}, [1.0, 1.0]).build(documents(), index)
    (index / "y" / "ranking.json").unlink()
    rebuilt = HybridRetriever({"x": Canned("x", "abc"), "y": Canned("y", "cba")}, [1.0, 1.0])
    assert rebuilt.build(documents(), index) is True
    assert (index / "y" / "ranking.json").exists()


def test_retrieve_before_build_is_a_clear_error() -> None:
    with pytest.raises(RqaError, match="no index"):
        HybridRetriever({"x": Canned("x", "ab"), "y": Canned("y", "ba")}, [1.0, 1.0]).retrieve(["q"], 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"members": "dense-faiss+bm25+dense-faiss"}, "names a retriever twice"),
        ({"members": "bm25+hybrid"}, "cannot be its own member"),
        ({"members": "bm25"}, "at least two members"),
        ({"weights": "1+2+3"}, "3 weights for 2 members"),
        ({"weights": "1+heavy"}, "numbers joined by '\\+'"),
        ({"weights": "0+0"}, "one at least above 0"),
        ({"depth": 0}, "depth must be >= 1"),
    ],
)
def test_bad_options_are_refused_by_name(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ComponentOptionError, match=message):
        get_plugins()["retrievers"].build("hybrid", options)


def test_an_unknown_member_lists_the_retrievers_there_are() -> None:
    with pytest.raises(UnknownComponentError, match=r"unknown retriever 'bm52'.*Available: .*dense-faiss"):
        get_plugins()["retrievers"].build("hybrid", {"members": "dense-faiss+bm52"})


def test_dense_and_bm25_fused_find_what_either_finds_first(tmp_path: Path) -> None:
    """Real members: the embedded MiniLM and BM25. A paraphrase needs the embedder, a model number needs BM25."""
    retriever = get_plugins()["retrievers"].build("hybrid", {}, embedding_model=DEFAULT_EMBEDDER)
    assert set(retriever.members) == {"dense-faiss", "bm25"}
    retriever.build(documents(), tmp_path / "index")
    dense, lexical = retriever.members["dense-faiss"], retriever.members["bm25"]
    paraphrase = "how often should limescale be removed from my water boiler"
    model_number = "what does ZX-4411 amber mean"
    for query, key in [(paraphrase, "a"), (model_number, "e")]:
        assert keys(retriever.retrieve([query], 1)[0]) == [key]
        assert key in keys(dense.retrieve([query], 1)[0]) + keys(lexical.retrieve([query], 1)[0])

    reused = get_plugins()["retrievers"].build("hybrid", {}, embedding_model=DEFAULT_EMBEDDER)
    assert reused.build(documents(), tmp_path / "index") is False
    assert reused.members["dense-faiss"]._encoder is None  # reuse did not even load the embedder
    assert keys(reused.retrieve([model_number], 1)[0]) == ["e"]


def test_rqa_index_builds_and_reuses_a_hybrid_index(tmp_path: Path) -> None:
    database = tmp_path / "documents.jsonl"
    database.write_text("".join(json.dumps({"page_content": text}) + "\n" for text in PASSAGES.values()))
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    command = [str(RQA), "index", "--documents", str(database), "--index", str(tmp_path / "index")]
    command += ["--retriever", "hybrid:depth=20,weights=1+0.5"]  # a spec: options after the name
    said = []
    for _ in range(2):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        said.append(" ".join((result.stdout + result.stderr).split()))
    assert "built (5 documents)" in said[0] and "reused (5 documents)" in said[1]
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["bm25", "dense-faiss", MANIFEST]
