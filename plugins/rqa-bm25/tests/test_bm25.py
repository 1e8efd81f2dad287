"""The bm25 plugin through rqa's real third-party path: installed distribution, entry point, hook."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rqa.indexing import NotAnIndexError
from rqa.plugins import load_plugins
from rqa.retrieval import IndexMismatchError
from rqa.schema import Document, read_documents, read_examples

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "faire"

DOCUMENTS = [
    Document("The Eiffel Tower in Paris was completed in 1889 for the World's Fair."),
    Document("Photosynthesis lets plants turn sunlight, water and carbon dioxide into glucose."),
    Document("The Great Barrier Reef off Queensland is the largest coral reef system."),
    Document("Python's garbage collector frees reference cycles that refcounting misses."),
    Document("Mount Kilimanjaro in Tanzania is Africa's highest mountain."),
    Document("Beethoven composed his Ninth Symphony while almost completely deaf."),
    Document("The mitochondrion is the powerhouse of the cell, producing ATP."),
    Document("Penguins are flightless seabirds living mostly in the Southern Hemisphere."),
]


def make_retriever(**options: str):
    return load_plugins()["retrievers"].create("bm25", options)


def test_entry_point_registers_bm25() -> None:
    plugins = load_plugins()
    assert "bm25" in plugins["retrievers"]
    component = plugins["retrievers"].get("bm25")
    assert component.package == "rqa-bm25"
    assert component.description.startswith("Sparse BM25")
    assert not [p for p in plugins.failed if p.package == "rqa-bm25"]


def test_discovery_does_not_import_bm25s() -> None:
    """``rqa list-plugins`` loads every plugin module; bm25s must wait until a retriever is built."""
    code = "import sys; from rqa.plugins import load_plugins; load_plugins(); print('bm25s' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_options_are_converted_and_checked() -> None:
    retriever = make_retriever(k1="1.2", b="0.5", method="bm25+")
    assert (retriever.k1, retriever.b, retriever.method) == (1.2, 0.5, "bm25+")
    with pytest.raises(Exception, match="method must be one of"):
        make_retriever(method="okapi")


def test_distinctive_words_find_their_document() -> None:
    retriever = make_retriever()
    assert retriever.build(DOCUMENTS) is True
    queries = ["Which coral REEF is off Queensland?", "who composed a symphony while deaf"]
    hits = retriever.retrieve(queries, 3)
    assert [h[0][0] for h in hits] == [DOCUMENTS[2], DOCUMENTS[5]]
    for row in hits:
        scores = [score for _, score in row]
        assert all(isinstance(score, float) for score in scores)
        assert scores == sorted(scores, reverse=True)
    # k is capped at the number of documents; a stopword-only query still answers
    assert len(retriever.retrieve(["penguins"], 50)[0]) == len(DOCUMENTS)
    assert len(retriever.retrieve(["the of and"], 2)[0]) == 2


def test_index_is_reused_rebuilt_or_refused(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    assert make_retriever().build(DOCUMENTS, index_dir) is True
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert (manifest["retriever"], manifest["num_documents"]) == ("bm25", len(DOCUMENTS))

    reused = make_retriever()
    assert reused.build(DOCUMENTS, index_dir) is False
    assert reused.retrieve(["Kilimanjaro"], 1)[0][0][0] == DOCUMENTS[4]

    changed = [*DOCUMENTS[:-1], Document("Emperor penguins huddle through the Antarctic winter.")]
    with pytest.raises(IndexMismatchError, match="fingerprint"):
        make_retriever().build(changed, index_dir, rebuild="never")
    with pytest.raises(IndexMismatchError, match="k1"):
        make_retriever(k1="1.2").build(DOCUMENTS, index_dir, rebuild="never")

    rebuilt = make_retriever()
    assert rebuilt.build(changed, index_dir) is True
    assert rebuilt.retrieve(["emperor antarctic"], 1)[0][0][0] == changed[-1]
    assert make_retriever().build(changed, index_dir, rebuild="never") is False
    assert make_retriever().build(changed, index_dir, rebuild="always") is True
    # the atomic write leaves no staging or retired directories behind
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_corrupt_index_is_rebuilt(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    make_retriever().build(DOCUMENTS, index_dir)
    (index_dir / "vocab.index.json").write_text("{not json")
    with pytest.raises(IndexMismatchError, match="corrupt"):
        make_retriever().build(DOCUMENTS, index_dir, rebuild="never")
    assert make_retriever().build(DOCUMENTS, index_dir) is True
    assert make_retriever().build(DOCUMENTS, index_dir) is False


def test_a_folder_that_is_not_an_index_is_left_alone(tmp_path: Path) -> None:
    """rqa's index rules hold for plugins too: another's folder is refused, another retriever's index replaced."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for rebuild in ("auto", "always", "never"):
        with pytest.raises(NotAnIndexError, match="is not an rqa index"):
            make_retriever().build(DOCUMENTS, folder, rebuild=rebuild)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "mine"

    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "manifest.json").write_text(json.dumps({"retriever": "dense-faiss", "num_documents": 3}))
    (dense / "index.faiss").write_bytes(b"vectors")
    assert make_retriever().build(DOCUMENTS, dense) is True
    assert json.loads((dense / "manifest.json").read_text())["retriever"] == "bm25"
    assert not (dense / "index.faiss").exists()


@pytest.mark.skipif(not (DATA / "documents.pkl").exists(), reason="shared faire data not present")
def test_recall_at_4_on_faire() -> None:
    documents = read_documents(DATA / "documents.pkl")
    examples = read_examples(DATA / "eval_w_qa.jsonl")[:30]
    retriever = make_retriever()
    retriever.build(documents)
    hits = retriever.retrieve([e.question for e in examples], 4)
    found = sum(
        any(doc.page_content == gold.page_content for doc, _ in row for gold in example.gold_docs)
        for example, row in zip(examples, hits, strict=True)
    )
    # measured 25/30 (0.83) with the defaults (k1=1.5, b=0.75, lucene, bm25s 0.3.16)
    assert found / len(examples) >= 0.75
