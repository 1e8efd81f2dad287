"""Dense retrieval with the embedded all-MiniLM-L6-v2: search quality, and when an index on disk is trusted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers import document

from rqa import __version__
from rqa.errors import RqaError
from rqa.fingerprint import model_fingerprint
from rqa.indexing import NotAnIndexError
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

    def __getattr__(self, name: str) -> Any:  # the tokenizer, max_seq_length…: the model's own
        return getattr(self.model, name)


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


# ---------------------------------------------------------------- index folders are rqa's alone


def write_database(path: Path, topics: list[tuple[str, str]] = TOPICS[:5]) -> Path:
    records = [{"page_content": text, "metadata": {"title": title}} for title, text in topics]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_rqa_index(database: Path, index: Path, *extra: str, cache: Path | None = None) -> tuple[int, str]:
    """``rqa index`` as a user runs it: the exit code and everything it printed, on one line."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    if cache is not None:
        env["RQA_CACHE_DIR"] = str(cache)
    command = [str(RQA), "index", "--documents", str(database), "--index", str(index), *extra]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=database.parent, timeout=180)
    return result.returncode, " ".join((result.stdout + result.stderr).split())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rqa_index_refuses_a_folder_of_the_users_own(tmp_path: Path) -> None:
    database = write_database(tmp_path / "documents.jsonl")
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    (data / "notes.txt").write_text("my own notes, not an index\n")
    (data / "raw" / "export.csv").write_text("id,text\n1,hello\n")
    before = snapshot(data)

    for extra in ((), ("--rebuild",), ("--check",)):
        code, said = run_rqa_index(database, data, *extra)
        assert code == 1, said
        assert f"{data} is not an rqa index (no manifest.json) and is not empty" in said
        assert "will not replace it" in said
        assert "Traceback" not in said
        assert snapshot(data) == before  # nothing moved, nothing deleted
        assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "documents.jsonl"]  # no staging left


def test_rqa_index_refuses_a_file(tmp_path: Path) -> None:
    database = write_database(tmp_path / "documents.jsonl")
    target = tmp_path / "index"
    target.write_text("a file where the index would go\n")
    code, said = run_rqa_index(database, target)
    assert code == 1, said
    assert f"{target} is a file, not an index folder" in said
    assert target.read_text() == "a file where the index would go\n"


@pytest.mark.parametrize("rebuild", ["auto", "always", "never"])
def test_a_folder_that_is_not_an_index_is_refused_before_embedding(
    tmp_path: Path, make_retriever: MakeRetriever, rebuild: Any
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    retriever, counter = make_retriever()
    with pytest.raises(NotAnIndexError, match=r"data is not an rqa index \(no manifest.json\)") as refused:
        retriever.build(make_documents(), folder, rebuild=rebuild)
    assert isinstance(refused.value, RqaError)
    assert counter.calls == []
    assert snapshot(folder) == {"keep.txt": b"precious"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_manifest_json_that_is_not_rqas_does_not_make_an_index(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / MANIFEST).write_text('{"name": "My web app", "icons": []}')
    (folder / "index.html").write_text("<h1>hello</h1>")
    before = snapshot(folder)
    retriever, counter = make_retriever()
    with pytest.raises(NotAnIndexError, match=r"its manifest\.json is not rqa's"):
        retriever.build(make_documents(), folder)
    assert counter.calls == [] and snapshot(folder) == before


def test_a_file_is_refused_as_an_index(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    target = tmp_path / "index"
    target.write_bytes(b"\x00data")
    retriever, counter = make_retriever()
    with pytest.raises(NotAnIndexError, match="is a file, not an index folder"):
        retriever.build(make_documents(), target)
    assert counter.calls == [] and target.read_bytes() == b"\x00data"


def test_missing_and_empty_folders_become_indexes(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = tmp_path / "deep" / "missing"
    for folder in (empty, missing):
        retriever, _ = make_retriever()
        assert retriever.build(make_documents(), folder) is True
        assert sorted(p.name for p in folder.iterdir()) == sorted([INDEX_FILE, MANIFEST])
        assert make_retriever()[0].build(make_documents(), folder) is False


def test_an_index_of_another_retriever_is_rebuilt(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    folder = tmp_path / "index"
    folder.mkdir()
    (folder / MANIFEST).write_text(json.dumps({"retriever": "bm25", "k1": 1.5, "rqa_version": __version__}))
    (folder / "params.index.json").write_text("{}")
    retriever, counter = make_retriever()
    assert retriever.build(make_documents(), folder) is True
    assert len(document_calls(counter)) == 1
    assert sorted(p.name for p in folder.iterdir()) == sorted([INDEX_FILE, MANIFEST])
    assert read_manifest(folder)["retriever"] == "dense-faiss"


def test_a_folder_filled_while_building_is_not_replaced(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    """Empty when the build starts, someone's files by the time it ends: checked again before replacing."""
    folder = tmp_path / "index"
    folder.mkdir()
    retriever, counter = make_retriever()
    real_encode = counter.encode

    def encode_while_a_file_arrives(texts: Any, *args: Any, **kwargs: Any) -> Any:
        (folder / "arrived.txt").write_text("written meanwhile")
        return real_encode(texts, *args, **kwargs)

    counter.encode = encode_while_a_file_arrives  # type: ignore[method-assign]
    with pytest.raises(NotAnIndexError, match="is not an rqa index"):
        retriever.build(make_documents(), folder)
    assert snapshot(folder) == {"arrived.txt": b"written meanwhile"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


# ---------------------------------------------------------------- the embedding model, by content


@pytest.fixture
def digest_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """rqa's cache (where file digests are remembered) in this test's own folder."""
    cache = tmp_path / "rqa-cache"
    monkeypatch.setenv("RQA_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def local_embedder(tmp_path: Path, digest_cache: Path) -> Path:
    """A copy of the embedded all-MiniLM-L6-v2 folder, ours to retrain."""
    return Path(shutil.copytree(resolve_embedder(DEFAULT_EMBEDDER), tmp_path / "embedder"))


def retrain_in_place(model_dir: Path) -> None:
    """New weights in model.safetensors: same size and same modification time, only the content differs."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    weights = model_dir / "model.safetensors"
    before = weights.stat()
    with safe_open(str(weights), "pt") as opened:
        metadata = opened.metadata()
        tensors = {name: opened.get_tensor(name) for name in opened.keys()}  # noqa: SIM118
    name = next(n for n in sorted(tensors) if n.endswith("weight") and tensors[n].dim() == 2)
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, str(weights), metadata=metadata)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert weights.stat().st_size == before.st_size and weights.stat().st_mtime_ns == before.st_mtime_ns


def test_retrained_weights_at_the_same_path_are_never_reused(
    tmp_path: Path, local_embedder: Path, digest_cache: Path, make_retriever: MakeRetriever
) -> None:
    database = write_database(tmp_path / "documents.jsonl")
    index_dir = tmp_path / "index"
    embedder = ("--embedding_model", str(local_embedder))
    code, said = run_rqa_index(database, index_dir, *embedder, cache=digest_cache)
    assert code == 0 and "built (5 documents)" in said, said
    fingerprint = read_manifest(index_dir)["embedding_model_fingerprint"]
    assert fingerprint.startswith("sha256:")
    code, said = run_rqa_index(database, index_dir, *embedder, "--check", cache=digest_cache)
    assert code == 0 and "reused (5 documents)" in said, said

    retrain_in_place(local_embedder)
    code, said = run_rqa_index(database, index_dir, *embedder, "--check", cache=digest_cache)
    assert code == 1, said
    assert "cannot be reused: it was built for a different embedding_model_fingerprint" in said
    assert read_manifest(index_dir)["embedding_model_fingerprint"] == fingerprint  # --check never builds

    documents = read_documents_of(database)
    retriever, counter = make_retriever(str(local_embedder))
    assert retriever.build(documents, index_dir) is True
    assert len(counter.calls) == 1
    assert read_manifest(index_dir)["embedding_model_fingerprint"] not in (fingerprint, None)
    again, again_counter = make_retriever(str(local_embedder))
    assert again.build(documents, index_dir) is False and again_counter.calls == []


def read_documents_of(path: Path) -> list[Document]:
    from rqa.schema import read_documents

    return read_documents(path)


def test_a_copy_of_the_model_has_the_same_fingerprint(tmp_path: Path, local_embedder: Path) -> None:
    original = model_fingerprint(resolve_embedder(DEFAULT_EMBEDDER))
    assert model_fingerprint(str(local_embedder)) == original
    # what sentence-transformers never reads does not count: other folders, hidden files
    (local_embedder / "checkpoint-10").mkdir()
    (local_embedder / "checkpoint-10" / "optimizer.pt").write_bytes(b"state")
    (local_embedder / ".cache").mkdir()
    (local_embedder / ".cache" / "download.lock").write_text("")
    assert model_fingerprint(str(local_embedder)) == original
    # a module's configuration and the tokenizer do
    pooling = local_embedder / "1_Pooling" / "config.json"
    pooling.write_text(
        pooling.read_text().replace('"pooling_mode_mean_tokens": true', '"pooling_mode_mean_tokens": false')
    )
    changed = model_fingerprint(str(local_embedder))
    assert changed != original
    (local_embedder / "vocab.txt").write_text((local_embedder / "vocab.txt").read_text() + "newword\n")
    assert model_fingerprint(str(local_embedder)) not in (original, changed)


def small_model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"hidden_size": 4}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_file_digests_are_remembered_and_a_rewrite_in_place_is_seen(
    tmp_path: Path, digest_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rqa.fingerprint

    monkeypatch.setattr(rqa.fingerprint, "_SMALL_FILE", 100)  # remember even these few bytes
    monkeypatch.setattr(rqa.fingerprint, "_RACY_SECONDS", -1.0)  # and files written a moment ago
    model = small_model(tmp_path / "model", b"A" * 1000)
    first = model_fingerprint(str(model))
    memory = json.loads((digest_cache / "file-digests.json").read_text())
    weights_key = str((model / "model.safetensors").resolve())
    assert set(memory) == {weights_key}  # config.json is under the threshold: hashed every time

    memory[weights_key]["sha256"] = "0" * 64  # proves the remembered digest is what is used
    (digest_cache / "file-digests.json").write_text(json.dumps(memory))
    assert model_fingerprint(str(model)) != first

    # rewritten in place, same size, modification time put back: the change time still tells
    weights = model / "model.safetensors"
    before = weights.stat()
    time.sleep(0.05)
    weights.write_bytes(b"A" * 1000)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert model_fingerprint(str(model)) == first


def test_a_file_just_written_is_not_remembered(tmp_path: Path, digest_cache: Path, monkeypatch) -> None:
    import rqa.fingerprint

    monkeypatch.setattr(rqa.fingerprint, "_SMALL_FILE", 100)
    model = small_model(tmp_path / "model", b"B" * 1000)
    model_fingerprint(str(model))
    assert not (digest_cache / "file-digests.json").exists()  # a write in the same time-stamp tick could hide


def test_a_hub_model_is_identified_by_its_cached_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_retriever: MakeRetriever
) -> None:
    hub_cache = tmp_path / "hub"
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(hub_cache))
    monkeypatch.chdir(tmp_path)
    assert model_fingerprint("intfloat/e5-base-v2") == "hub:intfloat/e5-base-v2"  # never downloaded

    def download(repo_id: str, commit: str) -> None:
        repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    retriever, _ = make_retriever("intfloat/e5-base-v2")
    expected = retriever.manifest(make_documents())
    assert expected["embedding_model_fingerprint"] == "hub:intfloat/e5-base-v2"
    download("intfloat/e5-base-v2", "a" * 40)  # as building does, by loading the model
    settled = retriever.settle_manifest(expected)
    assert settled["embedding_model_fingerprint"] == f"hub:intfloat/e5-base-v2@{'a' * 40}"
    assert retriever.settle_manifest(settled) == settled

    download("intfloat/e5-base-v2", "b" * 40)  # the Hub moved on and the cache followed
    assert retriever.manifest(make_documents())["embedding_model_fingerprint"].endswith("b" * 40)
    # a bare name is a sentence-transformers model, as sentence-transformers resolves it
    download("sentence-transformers/all-MiniLM-L6-v2", "c" * 40)
    assert model_fingerprint("all-MiniLM-L6-v2") == f"hub:sentence-transformers/all-MiniLM-L6-v2@{'c' * 40}"


def test_a_model_changed_between_reuse_and_first_query_is_reported(
    tmp_path: Path, local_embedder: Path, make_retriever: MakeRetriever, caplog: pytest.LogCaptureFixture
) -> None:
    index_dir = tmp_path / "index"
    make_retriever(str(local_embedder))[0].build(make_documents(), index_dir)
    reused = DenseFaissRetriever("dense-faiss", str(local_embedder), device="cpu")
    assert reused.build(make_documents(), index_dir) is False
    retrain_in_place(local_embedder)
    with caplog.at_level("WARNING", logger="rqa"):
        reused.retrieve(["Which is the biggest planet?"], 1)
    assert "changed after its index was checked" in caplog.text


# ---------------------------------------------------------------- what the embedder reads


def with_source(document_: Document, url: str) -> Document:
    return replace(document_, fmt_content=f"Source: {url}\n{document_.fmt_content}")


def test_passages_can_be_embedded_without_their_urls(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    documents = [with_source(d, f"https://help.example.com/articles/{i}") for i, d in enumerate(make_documents())]
    index_dir = tmp_path / "index"
    default, counter = make_retriever()
    default.build(documents, index_dir)
    assert read_manifest(index_dir)["embed_urls"] is True
    assert all("https://help.example.com" in text for text in counter.calls[0])

    without, counter = make_retriever(embed_urls=False)
    assert without.build(documents, index_dir) is True  # the index read the URLs: rebuilt
    assert counter.calls[0][0] == "Source: \nTitle: Kettle care\nContent: " + TOPICS[0][1]
    assert not any("http" in text for text in counter.calls[0])
    assert read_manifest(index_dir)["embed_urls"] is False
    hits = without.retrieve(["How do I get rid of the chalky build-up inside my kettle?"], 1)
    assert hits[0][0][0].fmt_content.startswith("Source: https://help.example.com/articles/0")  # what is returned
    assert "embed_urls" in (default.try_load(index_dir, default.manifest(documents)) or "")


def test_a_model_folder_records_how_it_reads_passages(tmp_path: Path) -> None:
    from rqa.retrieval import record_reading

    folder = tmp_path / "model"
    folder.mkdir()
    assert DenseFaissRetriever("dense-faiss", str(folder)).embed_urls is True  # nothing recorded
    record_reading(folder, False, False)
    assert DenseFaissRetriever("dense-faiss", str(folder)).embed_urls is False
    assert DenseFaissRetriever("dense-faiss", str(folder), embed_urls=True).embed_urls is True  # asked for
    assert DenseFaissRetriever("dense-faiss", str(folder)).windows is False
    record_reading(folder, False, True)
    assert DenseFaissRetriever("dense-faiss", str(folder)).windows is True
    assert DenseFaissRetriever("dense-faiss", str(folder), windows=False).windows is False  # asked for
    (folder / "rqa_retriever.json").write_text('{"embed_urls": "no"}')
    with pytest.raises(RqaError, match=r"rqa_retriever.json: 'embed_urls' must be true or false"):
        _ = DenseFaissRetriever("dense-faiss", str(folder)).embed_urls


def test_embed_urls_is_a_retriever_option() -> None:
    from rqa.pipeline import choose

    choice = choose("retrievers", "e5-faiss", ["embed_urls=false"])
    assert choice.options == {"embed_urls": False}
    assert choice.build().embed_urls is False


# ---------------------------------------------------------------- passages longer than the embedder reads

LAUNCH = "The spare key for the volcano observatory is kept in the blue box under the front desk."
FILLER = " ".join(f"Orders placed on day {i} ship within two business days by standard post." for i in range(30))


def long_documents() -> list[Document]:
    """The usual topics and one passage whose last sentence (past what MiniLM reads) is the answer."""
    return [*make_documents(), document(f"{FILLER} {LAUNCH}", "Shipping times")]


def test_windows_let_the_end_of_a_long_passage_be_found(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    question = "Where is the spare key for the volcano observatory kept?"
    documents = long_documents()
    cut, _ = make_retriever()
    cut.build(documents, tmp_path / "cut")
    assert cut.retrieve([question], 1)[0][0][0].metadata["title"] != "Shipping times"  # only its beginning is read

    whole, counter = make_retriever(windows=True)
    index_dir = tmp_path / "windows"
    assert whole.build(documents, index_dir) is True
    assert len(counter.calls[0]) > len(documents)  # the long passage is several windows, the rest one each
    assert whole.retrieve([question], 1)[0][0][0].metadata["title"] == "Shipping times"
    ranked = whole.retrieve([question], len(documents))[0]
    assert sorted(d.page_content for d, _ in ranked) == sorted(d.page_content for d in documents)  # each once
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    assert read_manifest(index_dir)["windows"] is True

    reused, counter = make_retriever(windows=True)
    assert reused.build(documents, index_dir) is False and counter.calls == []  # the windows' index is trusted
    assert reused.retrieve([question], 3) == whole.retrieve([question], 3)
    assert make_retriever()[0].build(documents, index_dir) is True  # read without windows: rebuilt
    assert read_manifest(index_dir)["windows"] is False


def test_an_index_whose_windows_miss_a_passage_is_rebuilt(tmp_path: Path, make_retriever: MakeRetriever) -> None:
    import faiss
    import numpy as np

    documents = long_documents()
    index_dir = tmp_path / "index"
    make_retriever(windows=True)[0].build(documents, index_dir)
    index = faiss.read_index(str(index_dir / INDEX_FILE))
    index.remove_ids(np.array([0], dtype=np.int64))  # passage 0's window gone
    faiss.write_index(index, str(index_dir / INDEX_FILE))
    retriever = make_retriever(windows=True)[0]
    assert "cover" in (retriever.try_load(index_dir, retriever.manifest(documents)) or "")
    assert retriever.build(documents, index_dir) is True


def test_windows_is_a_retriever_option() -> None:
    from rqa.pipeline import choose

    assert choose("retrievers", "dense-faiss", ["windows=true"]).build().windows is True
    assert choose("retrievers", "hybrid", ["windows=true"]).build().members["dense-faiss"].windows is True


def test_windows_repeat_the_header_when_urls_are_left_out(make_retriever: MakeRetriever) -> None:
    text = f"{FILLER} Rates: https://help.example.com/rates {LAUNCH}"
    documents = [with_source(document(text, "Shipping times"), "https://help.example.com/7"), *make_documents()]
    retriever, counter = make_retriever(windows=True, embed_urls=False)
    retriever.build(documents)
    pieces = [t for t in counter.calls[0] if "Orders placed" in t or "spare key" in t]
    assert len(pieces) > 1 and all(t.startswith("Source: \nTitle: Shipping times\nContent: ") for t in pieces)
    assert not any("http" in t for t in counter.calls[0])
