"""Reading QA files and document databases: LocalRQA shapes accepted, broken records located exactly."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from rqa.errors import DataError
from rqa.schema import Document, fingerprint_documents, read_documents, read_examples

FAIRE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faire"
GOOD = {
    "question": "How do I descale?",
    "gold_answer": "Use the descale preset.",
    "gold_docs": [{"page_content": "Run the descale preset.", "fmt_content": "", "metadata": {}}],
    "chat_history": [],
}


def write_lines(path: Path, *records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def error_for(tmp_path: Path, *records) -> str:
    with pytest.raises(DataError) as caught:
        read_examples(write_lines(tmp_path / "qa.jsonl", *records))
    return str(caught.value)


def test_both_turn_shapes_and_literal_metadata_are_accepted(tmp_path: Path) -> None:
    record = {
        **GOOD,
        "chat_history": [
            {"speaker": "USER", "message": "Hi", "source_documents": []},
            {"role": "assistant", "content": "Hello!"},
        ],
        "gold_docs": [{"page_content": "P", "metadata": "{'source': 'https://x', 'seq_num': 2}"}],
    }
    (example,) = read_examples(write_lines(tmp_path / "qa.jsonl", record))
    assert [(t.role, t.content) for t in example.chat_history] == [("user", "Hi"), ("assistant", "Hello!")]
    assert example.gold_docs[0].metadata == {"source": "https://x", "seq_num": 2}
    assert example.gold_docs[0].text == "P"  # fmt_content falls back to page_content
    assert example.source.endswith("qa.jsonl:1")


def test_metadata_strings_are_never_evaluated(tmp_path: Path) -> None:
    record = {**GOOD, "gold_docs": [{"page_content": "P", "metadata": "__import__('os').system('touch pwned')"}]}
    message = error_for(tmp_path, GOOD, record)
    assert "qa.jsonl:2" in message and "gold_docs[0].metadata" in message
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ('{"question": "x", ', "qa.jsonl:2: is not valid JSON"),
        ({**GOOD, "gold_answer": ""}, "qa.jsonl:2: field 'gold_answer': is empty"),
        ({k: v for k, v in GOOD.items() if k != "gold_answer"}, "qa.jsonl:2: field 'gold_answer': is missing"),
        ({**GOOD, "question": 3}, "qa.jsonl:2: field 'question': must be a string, got int"),
        ({**GOOD, "gold_docs": []}, "qa.jsonl:2: field 'gold_docs': is empty"),
        ({**GOOD, "gold_docs": "P"}, "qa.jsonl:2: field 'gold_docs': must be a list of documents, got a str"),
        ({**GOOD, "gold_docs": [{"text": "P"}]}, "field 'gold_docs[0].page_content': is missing"),
        ({**GOOD, "chat_history": [{"who": "user"}]}, "field 'chat_history[0]': needs 'speaker' and 'message'"),
        ({**GOOD, "chat_history": "hello"}, "field 'chat_history': must be a list of turns, got str"),
        ([1, 2], "qa.jsonl:2: a QA record must be a JSON object, got list"),
    ],
)
def test_broken_records_name_file_line_and_field(tmp_path: Path, record, expected: str) -> None:
    assert expected in error_for(tmp_path, GOOD, record)


def test_bytes_that_are_not_utf8_and_empty_files(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"qa.jsonl:2: is not valid UTF-8"):
        read_examples(path)
    with pytest.raises(DataError, match="holds no QA records"):
        read_examples(write_lines(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match="cannot be read"):
        read_examples(tmp_path / "missing.jsonl")


def test_records_without_a_question_are_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    examples = read_examples(write_lines(tmp_path / "qa.jsonl", GOOD, {**GOOD, "question": " "}, GOOD))
    assert len(examples) == 2
    assert "qa.jsonl:2: field 'question': is empty; skipping" in caplog.text


def test_jsonl_database_drops_duplicates_with_a_warning(tmp_path: Path, caplog) -> None:
    doc = {"page_content": "A", "fmt_content": "Title: a\nA", "metadata": {}}
    documents = read_documents(write_lines(tmp_path / "db.jsonl", doc, {"page_content": "B"}, doc))
    assert [d.page_content for d in documents] == ["A", "B"]
    assert "dropped 1 duplicate documents" in caplog.text


def localrqa_pickle(path: Path, documents: list[dict]) -> Path:
    """A pickle referencing ``local_rqa.schema.document.Document``, as LocalRQA writes one."""
    import sys
    import types

    module = types.ModuleType("local_rqa.schema.document")

    class Document:  # LocalRQA's class, stateful through __dict__
        pass

    Document.__module__ = "local_rqa.schema.document"
    Document.__qualname__ = "Document"
    module.Document = Document
    for name in ("local_rqa", "local_rqa.schema", "local_rqa.schema.document"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["local_rqa.schema.document"] = module
    try:
        objects = []
        for fields in documents:
            instance = Document()
            instance.__dict__.update(fields)
            objects.append(instance)
        path.write_bytes(pickle.dumps(objects))
    finally:
        for name in ("local_rqa.schema.document", "local_rqa.schema", "local_rqa"):
            sys.modules.pop(name, None)
    return path


def test_localrqa_pickle_is_read_without_importing_localrqa(tmp_path: Path) -> None:
    path = localrqa_pickle(
        tmp_path / "db.pkl",
        [{"page_content": "A", "fmt_content": "Source: s\nA", "metadata": {"source": "s"}}],
    )
    (document,) = read_documents(path)
    assert document == Document(page_content="A", fmt_content="Source: s\nA")
    assert document.metadata == {"source": "s"}


class Hostile:
    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_hostile_pickle_runs_nothing_and_fails_clearly(tmp_path: Path) -> None:
    hostile = Hostile()
    hostile.target = str(tmp_path / "pwned")
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([hostile]))
    with pytest.raises(DataError, match=r"evil.pkl: is not a safe LocalRQA database pickle: refusing to load"):
        read_documents(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.skipif(not FAIRE.exists(), reason="the Faire data is not available")
def test_faire_database_pickle_and_qa_files() -> None:
    documents = read_documents(FAIRE / "documents.pkl")
    assert len(documents) == 1705  # 1758 items, 53 of them repeat an earlier page_content
    assert all(d.page_content and d.fmt_content.startswith("Source: ") for d in documents)
    assert fingerprint_documents(documents) == fingerprint_documents(read_documents(FAIRE / "documents.pkl"))
    assert len(read_examples(FAIRE / "train_w_qa.jsonl")) == 574  # one record has an empty question
    assert len(read_examples(FAIRE / "eval_w_qa.jsonl")) == 73
