"""Dense retrieval with the embedded all-MiniLM-L6-v2: search quality, and when an index on disk is trusted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers import document

from rqa import __version__
from rqa.errors import RqaError
from rqa.models import DEFAULT_EMBEDDER, resolve_embedder
from rqa.retrieval import INDEX_FILE, MANIFEST, DenseFaissRetriever, IndexMismatchError
from rqa.schema import Document

RQA = Path(sys.executable).parent / "rqa"

TOPICS = [
    ("Kettle care", "Descale the kettle every four weeks with white vinegar to remove limescale."),
    ("Photosynthesis", "Plants convert sunlight, water and carbon dioxide into glucose and oxygen in their leaves."),
    ("Eiffel Tower", "The Eiffel Tower in Paris was completed in 1889 for the World's Fair."),
    ("Python", "A list comprehension builds a new Python list from an iterable in a single expression."),
    ("Running", "Marathon runners build endurance with a weekly long run and gradually increase mileage."),
    ("Baking", "Sourdough bread rises thanks to a starter of wild yeast and lactic acid bacteria."),
    ("Volcanoes", "When a volcano erupts, molten lava and ash are expelled from the magma chamber."),
    ("Bitcoin", "Bitcoin transactions are recorded on a public blockchain secured by proof of work mining."),
    ("Jupiter", "Jupiter is the largest planet in the solar system, a gas giant with a great red spot."),
    ("Taxes", "Individual income tax returns are usually due in mid April each year."),
]


def make_documents() -> list[Document]:
    return [document(text, title) for title, text in TOPICS]


class CountingEncoder:
    """Wraps a SentenceTransformer and records the texts of every ``encode`` call."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls: list[list[str]] = []

    def encode(self, texts: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(list(texts))
        return self.model.encode(texts, *args, **kwargs)


@pytest.fixture(scope="module")
def minilm() -> Any:
    """The embedded all-MiniLM-L6-v2, loaded once for the module."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_embedder(DEFAULT_EMBEDDER), device="cpu")


MakeRetriever = Callable[..., tuple[DenseFaissRetriever, CountingEncoder]]


@pytest.fixture
def make_retriever(minilm: Any) -> MakeRetriever:
    """A fresh DenseFaissRetriever sharing the loaded model through a counting encoder."""

    def make(embedding_model: str = DEFAULT_EMBEDDER, **kwargs: Any) -> tuple[DenseFaissRetriever, CountingEncoder]:
        retriever = DenseFaissRetriever("dense-faiss", embedding_model, **kwargs)
        counter = CountingEncoder(minilm)
        retriever._encoder = counter
        return retriever, counter

    return make


@pytest.fixture(scope="module")
def built(minilm: Any) -> DenseFaissRetriever:
    retriever = DenseFaissRetriever("dense-faiss", DEFAULT_EMBEDDER)
    retriever._encoder = minilm
    assert retriever.build(make_documents()) is True
    return retriever


def read_manifest(index_dir: Path) -> dict[str, Any]:
    return json.loads((index_dir / MANIFEST).read_text())


def document_calls(counter: CountingEncoder) -> list[list[str]]:
    passages = {d.text for d in make_documents()}
    return [call for call in counter.calls if passages & set(call)]


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- search


@pytest.mark.parametrize(
    ("query", "title"),
    [
        ("How do I get rid of the chalky build-up inside my kettle?", "Kettle care"),
        ("How do plants turn light into food?", "Photosynthesis"),
        ("Which is the biggest planet orbiting the sun?", "Jupiter"),
        ("When is the deadline for filing my taxes?", "Taxes"),
        ("What comes out of an erupting mountain?", "Volcanoes"),
        ("How should I prepare for running 42 kilometres?", "Running"),
    ],
)
def test_paraphrased_query_finds_its_document_first(built: DenseFaissRetriever, query: str, title: str) -> None:
    [hits] = built.retrieve([query], 3)
    assert hits[0][0].metadata["title"] == title, [(d.metadata["title"], s) for d, s in hits]


def test_scores_are_descending_floats(built: DenseFaissRetriever) -> None:
    results = built.retrieve(["Which is the biggest planet?", "sourdough starter yeast"], 5)
    assert len(results) == 2
    for hits in results:
        scores = [score for _, score in hits]
        assert len(hits) == 5
        assert all(type(score) is float for score in scores)
        assert scores == sorted(scores, reverse=True)
        assert all(-1.0001 <= score <= 1.0001 for score in scores)  # normalised vectors: cosine similarity
        assert len({d.page_content for d, _ in hits}) == 5


def test_k_is_capped_at_the_number_of_documents(built: DenseFaissRetriever) -> None:
    [hits] = built.retrieve(["anything at all"], 50)
    assert len(hits) == len(TOPICS)
    assert {d.page_content for d, _ in hits} == {d.page_content for d in make_documents()}


def test_retrieve_before_build_is_a_clear_error() -> None:
    with pytest.raises(RqaError, match="no index"):
        DenseFaissRetriever("dense-faiss", DEFAULT_EMBEDDER).retrieve(["q"], 1)


# ---------------------------------------------------------------- reuse and rebuild


def test_index_is_reused_without_embedding_the_documents(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    index_dir = tmp_path / "index"
    first, first_counter = make_retriever()
    assert first.build(make_documents(), index_dir) is True
    assert len(document_calls(first_counter)) == 1
    manifest = read_manifest(index_dir)
    assert manifest == {**first.manifest(make_documents()), "rqa_version": __version__}
    assert manifest["num_documents"] == len(TOPICS)

    second, second_counter = make_retriever()
    assert second.build(make_documents(), index_dir) is False
    assert second_counter.calls == []
    assert second.faiss_index.ntotal == len(TOPICS)
    assert read_manifest(index_dir) == manifest

    query = "Which is the biggest planet orbiting the sun?"
    [reused_hits] = second.retrieve([query], 3)
    assert second_counter.calls == [[query]]  # only the query was embedded
    [fresh_hits] = first.retrieve([query], 3)
    assert [d.page_content for d, _ in reused_hits] == [d.page_content for d, _ in fresh_hits]
    assert [s for _, s in reused_hits] == pytest.approx([s for _, s in fresh_hits], abs=1e-5)


def test_reuse_does_not_even_load_the_embedder(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    index_dir = tmp_path / "index"
    first, _ = make_retriever()
    first.build(make_documents(), index_dir)
    untouched = DenseFaissRetriever("dense-faiss", DEFAULT_EMBEDDER)
    assert untouched.build(make_documents(), index_dir, rebuild="never") is False
    assert untouched._encoder is None


def test_index_is_rebuilt_when_a_document_changes(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    index_dir = tmp_path / "index"
    first, _ = make_retriever()
    first.build(make_documents(), index_dir)
    before = read_manifest(index_dir)

    edited = make_documents()
    edited[4] = document("Sprinters train explosive starts on a short track.", "Running")
    second, counter = make_retriever()
    assert second.build(edited, index_dir) is True
    assert len(counter.calls) == 1 and len(counter.calls[0]) == len(TOPICS)
    after = read_manifest(index_dir)
    assert after["fingerprint"] != before["fingerprint"]
    assert after == {**second.manifest(edited), "rqa_version": __version__}
    assert second.try_load(index_dir, second.manifest(edited)) is None
    [hits] = second.retrieve(["short-distance sprint starts"], 1)
    assert hits[0][0].page_content.startswith("Sprinters")


def test_metadata_only_change_changes_nothing(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    index_dir = tmp_path / "index"
    first, _ = make_retriever()
    first.build(make_documents(), index_dir)
    relabelled = [replace(d, metadata={"title": "other", "id": i}) for i, d in enumerate(make_documents())]
    second, counter = make_retriever()
    assert second.build(relabelled, index_dir) is False  # what is embedded (fmt_content) did not change
    assert counter.calls == []


def test_index_is_rebuilt_when_the_embedder_changes(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    index_dir = tmp_path / "index"
    first, _ = make_retriever()
    first.build(make_documents(), index_dir)
    assert read_manifest(index_dir)["embedding_model"] == DEFAULT_EMBEDDER

    local_path = resolve_embedder(DEFAULT_EMBEDDER)
    second, counter = make_retriever(local_path)
    assert second.build(make_documents(), index_dir) is True
    assert len(document_calls(counter)) == 1
    assert read_manifest(index_dir)["embedding_model"] == local_path != DEFAULT_EMBEDDER


@pytest.mark.parametrize(
    ("option", "value"),
    [("passage_prefix", "passage: "), ("query_prefix", "query: "), ("normalize", False)],
)
def test_index_is_rebuilt_when_the_encoding_changes(
    tmp_path: Path, make_retriever: MakeRetriever, option: str, value: Any
) -> None:
    index_dir = tmp_path / "index"
    first, _ = make_retriever()
    first.build(make_documents(), index_dir)
    second, counter = make_retriever(**{option: value})
    assert second.build(make_documents(), index_dir) is True
    assert len(counter.calls) == 1
    if option == "passage_prefix":
        assert all(text.startswith("passage: ") for text in counter.calls[0])
    assert read_manifest(index_dir)[option] == value
    # and the old settings now see a mismatch naming the field
    third, _ = make_retriever()
    assert option in (third.try_load(index_dir, third.manifest(make_documents())) or "")


def test_rebuild_never_refuses_a_mismatch(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    index_dir = tmp_path / "index"
    retriever, counter = make_retriever()
    with pytest.raises(IndexMismatchError, match="cannot be reused: no index there yet"):
        retriever.build(make_documents(), index_dir, rebuild="never")
    assert counter.calls == [] and not index_dir.exists()

    retriever.build(make_documents(), index_dir)
    before = (index_dir / INDEX_FILE).read_bytes(), read_manifest(index_dir)
    edited = [*make_documents()[:-1], document("Tax refunds arrive within three weeks.", "Taxes")]
    other, other_counter = make_retriever()
    with pytest.raises(IndexMismatchError, match=r"cannot be reused: it was built for a different fingerprint"):
        other.build(edited, index_dir, rebuild="never")
    assert other_counter.calls == []
    assert ((index_dir / INDEX_FILE).read_bytes(), read_manifest(index_dir)) == before  # left alone

    fewer, _ = make_retriever()
    with pytest.raises(IndexMismatchError, match="num_documents"):
        fewer.build(make_documents()[:5], index_dir, rebuild="never")
    assert issubclass(IndexMismatchError, RqaError)  # the CLI shows it without a traceback

    matching, _ = make_retriever()
    assert matching.build(make_documents(), index_dir, rebuild="never") is False


def test_rebuild_always_rebuilds_a_matching_index(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    index_dir = tmp_path / "index"
    first, _ = make_retriever()
    first.build(make_documents(), index_dir)
    second, counter = make_retriever()
    assert second.build(make_documents(), index_dir, rebuild="always") is True
    assert len(document_calls(counter)) == 1
    assert second.try_load(index_dir, second.manifest(make_documents())) is None
    assert leftovers(tmp_path) == []


def _truncate(index_dir: Path) -> None:
    path = index_dir / INDEX_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(index_dir: Path) -> None:
    (index_dir / INDEX_FILE).write_bytes(b"not a faiss index at all")


def _empty(index_dir: Path) -> None:
    (index_dir / INDEX_FILE).write_bytes(b"")


def _unreadable_manifest(index_dir: Path) -> None:
    (index_dir / MANIFEST).write_text('{"retriever": "dense-fa')


def _missing_index(index_dir: Path) -> None:
    (index_dir / INDEX_FILE).unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_truncate, "truncated or corrupt"),
        (_garbage, "truncated or corrupt"),
        (_empty, "truncated or corrupt"),
        (_unreadable_manifest, "manifest is unreadable"),
        (_missing_index, "no index there yet"),
    ],
)
def test_damaged_index_is_not_trusted(
    tmp_path: Path, make_retriever: MakeRetriever, damage: Callable[[Path], None], reason: str
) -> None:
    index_dir = tmp_path / "index"
    first, _ = make_retriever()
    first.build(make_documents(), index_dir)
    damage(index_dir)
    expected = first.manifest(make_documents())
    assert reason in (first.try_load(index_dir, expected) or "")

    checker, _ = make_retriever()
    with pytest.raises(IndexMismatchError, match=reason):
        checker.build(make_documents(), index_dir, rebuild="never")
    second, counter = make_retriever()
    assert second.build(make_documents(), index_dir) is True
    assert len(document_calls(counter)) == 1
    assert first.try_load(index_dir, expected) is None
    third, third_counter = make_retriever()
    assert third.build(make_documents(), index_dir) is False and third_counter.calls == []


@pytest.mark.parametrize("content", ["[]", "null"])
def test_manifest_that_is_not_an_object_is_not_trusted(
    tmp_path: Path, make_retriever: MakeRetriever, content: str
) -> None:
    index_dir = tmp_path / "index"
    first, _ = make_retriever()
    first.build(make_documents(), index_dir)
    (index_dir / MANIFEST).write_text(content)
    assert "manifest is unreadable" in (first.try_load(index_dir, first.manifest(make_documents())) or "")
    second, _ = make_retriever()
    assert second.build(make_documents(), index_dir) is True


def test_index_of_another_size_under_a_matching_manifest_is_not_trusted(
    tmp_path: Path, make_retriever: MakeRetriever
) -> None:
    small, full = tmp_path / "small", tmp_path / "full"
    make_retriever()[0].build(make_documents()[:4], small)
    make_retriever()[0].build(make_documents(), full)
    shutil.copyfile(small / INDEX_FILE, full / INDEX_FILE)
    retriever, counter = make_retriever()
    problem = retriever.try_load(full, retriever.manifest(make_documents()))
    assert problem == f"it holds 4 vectors for {len(TOPICS)} documents"
    assert retriever.build(make_documents(), full) is True
    assert retriever.faiss_index.ntotal == len(TOPICS)
    assert len(counter.calls) == 1


# ---------------------------------------------------------------- crashes


class Crash(RuntimeError):
    pass


def crashing_write_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """faiss.write_index writes half a file and then dies, as on a full disk."""
    import faiss

    real = faiss.write_index

    def write_half_then_crash(index: Any, path: str) -> None:
        real(index, path)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise Crash("disk full")

    monkeypatch.setattr(faiss, "write_index", write_half_then_crash)


def test_crash_while_rebuilding_leaves_the_old_index_untrusted_for_the_new_database(
    tmp_path: Path, make_retriever: MakeRetriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    index_dir = tmp_path / "index"
    old, _ = make_retriever()
    old.build(make_documents(), index_dir)
    old_manifest, old_bytes = read_manifest(index_dir), (index_dir / INDEX_FILE).read_bytes()

    edited = make_documents()
    edited[0] = document("Wipe the kettle's outside with a damp cloth.", "Kettle care")
    with monkeypatch.context() as patch:
        crashing_write_index(patch)
        new, _ = make_retriever()
        with pytest.raises(Crash, match="disk full"):
            new.build(edited, index_dir)

    assert leftovers(tmp_path) == []  # no .index.building-* (or .old-*) directory stays behind
    assert sorted(p.name for p in index_dir.iterdir()) == sorted([INDEX_FILE, MANIFEST])
    assert read_manifest(index_dir) == old_manifest  # the old, complete index is still there ...
    assert (index_dir / INDEX_FILE).read_bytes() == old_bytes
    assert old.try_load(index_dir, old.manifest(make_documents())) is None
    assert new.try_load(index_dir, new.manifest(edited)) is not None  # ... and does not match the new database

    later, counter = make_retriever()
    assert later.build(edited, index_dir) is True
    assert len(counter.calls) == 1
    assert read_manifest(index_dir)["fingerprint"] == later.manifest(edited)["fingerprint"]


def test_crash_on_a_first_build_leaves_no_index(
    tmp_path: Path, make_retriever: MakeRetriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    index_dir = tmp_path / "index"
    with monkeypatch.context() as patch:
        crashing_write_index(patch)
        retriever, _ = make_retriever()
        with pytest.raises(Crash):
            retriever.build(make_documents(), index_dir)
    assert not index_dir.exists()
    assert list(tmp_path.iterdir()) == []


def test_crash_while_embedding_leaves_no_index(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    index_dir = tmp_path / "index"
    retriever, counter = make_retriever()

    def die(texts: Any, *args: Any, **kwargs: Any) -> Any:
        raise Crash("out of memory")

    counter.encode = die  # type: ignore[method-assign]
    with pytest.raises(Crash):
        retriever.build(make_documents(), index_dir)
    assert list(tmp_path.iterdir()) == []


def test_crash_while_swapping_directories_is_not_trusted(
    tmp_path: Path, make_retriever: MakeRetriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between moving the old index aside and moving the new one in: nothing is at the index path."""
    index_dir = tmp_path / "index"
    old, _ = make_retriever()
    old.build(make_documents(), index_dir)
    edited = [*make_documents()[:-1], document("Tax refunds arrive within three weeks.", "Taxes")]
    real_replace = os.replace

    def replace_then_die(source: Any, target: Any) -> None:
        if Path(target) == index_dir:
            raise Crash("killed")
        real_replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace_then_die)
        with pytest.raises(Crash):
            make_retriever()[0].build(edited, index_dir)
    assert not any(name.startswith(".index.building-") for name in leftovers(tmp_path))
    new, counter = make_retriever()
    assert new.try_load(index_dir, new.manifest(edited)) is not None
    assert new.build(edited, index_dir) is True
    assert len(counter.calls) == 1


# ---------------------------------------------------------------- the rqa index command


def test_rqa_index_command_builds_reuses_and_checks(tmp_path: Path) -> None:
    database = tmp_path / "documents.jsonl"
    records = [{"page_content": text, "metadata": {"title": title}} for title, text in TOPICS[:5]]
    database.write_text("".join(json.dumps(r) + "\n" for r in records))
    index_dir = tmp_path / "index"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}

    def rqa_index(*extra: str) -> subprocess.CompletedProcess[str]:
        command = [str(RQA), "index", "--documents", str(database), "--index", str(index_dir), *extra]
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)

    def said(result: subprocess.CompletedProcess[str]) -> str:
        return " ".join((result.stdout + result.stderr).split())

    first = rqa_index()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "built (5 documents)" in said(first)
    assert read_manifest(index_dir)["num_documents"] == 5

    second = rqa_index()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "reused (5 documents)" in said(second)

    records[2]["page_content"] = "The Eiffel Tower is repainted every seven years."
    database.write_text("".join(json.dumps(r) + "\n" for r in records))
    manifest = read_manifest(index_dir)
    check = rqa_index("--check")
    assert check.returncode == 1, check.stdout + check.stderr
    assert "cannot be reused" in said(check)
    assert "fingerprint" in said(check)
    assert "Traceback" not in check.stdout + check.stderr
    assert read_manifest(index_dir) == manifest  # --check never builds
