"""``rqa ask`` and ``rqa chat``: retrieval, the training prompt with history, and generation, through the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import embedded_tokenizer, tiny_model

from rqa.assistant import Assistant, Conversation, resolve_settings
from rqa.data import ExampleEncoder
from rqa.errors import RqaError
from rqa.formatting import LAYOUTS, LayoutFormatter
from rqa.schema import Document, Example, Turn, read_documents

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ROOT / "example" / "documents.jsonl"
RQA = str(Path(sys.executable).parent / "rqa")
QUESTION = "How often should I descale the kettle?"
FOLLOW_UP = "And how long does a descale cycle take?"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by the CLI runs: the first builds it, the others reuse it (the manifest matches)."""
    return tmp_path_factory.mktemp("ask") / "index"


def rqa(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("RQA_LOAD_PLUGINS", None)
    return subprocess.run([RQA, *args], capture_output=True, text=True, timeout=120, env=env, input=stdin, cwd=ROOT)


def test_ask_json_answers_with_sources_from_the_database(tiny_model_dir: Path, index_dir: Path) -> None:
    result = rqa(
        "ask", QUESTION, "--model", str(tiny_model_dir), "--documents", str(DOCUMENTS), "--index", str(index_dir),
        "--max-new-tokens", "4", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    reply = json.loads(result.stdout)  # stdout holds the JSON alone
    assert reply["question"] == QUESTION and isinstance(reply["answer"], str)
    assert len(reply["sources"]) == 4
    database = {d.page_content: d for d in read_documents(DOCUMENTS)}
    for source in reply["sources"]:
        assert set(source) == {"title", "source", "score", "page_content"}
        document = database[source["page_content"]]
        assert (source["title"], source["source"]) == (document.metadata["title"], document.metadata["source"])
    scores = [s["score"] for s in reply["sources"]]
    assert scores == sorted(scores, reverse=True)
    assert "descale" in reply["sources"][0]["page_content"].lower()


def prompts_of(output: str) -> list[str]:
    return re.findall(r"─ prompt ─+\n(.*?)\n─+ end of prompt ─", output, flags=re.DOTALL)


def test_chat_carries_history_into_the_prompt_until_reset(tiny_model_dir: Path, index_dir: Path) -> None:
    third = "Can I use vinegar?"
    result = rqa(
        "chat", "--model", str(tiny_model_dir), "--documents", str(DOCUMENTS), "--index", str(index_dir),
        "--max_new_tokens", "4", "--show_prompt",
        stdin=f"{QUESTION}\n{FOLLOW_UP}\n/reset\n{third}\n/quit\nnever asked\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    first, second, after_reset = prompts_of(result.stdout)
    answers = re.findall(r"^rqa> (.*)$", result.stdout, flags=re.MULTILINE)
    assert len(answers) == 3
    exchange = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{answers[0]}"
    assert exchange in second and second.index(exchange) < second.index(FOLLOW_UP)
    assert FOLLOW_UP not in first
    assert QUESTION not in after_reset and third in after_reset
    assert "never asked" not in result.stdout.split("you> /quit")[-1]


def test_conversation_prompts_are_the_training_prompts() -> None:
    """The second turn's prompt is ExampleEncoder.prompt_ids of an example carrying the first exchange."""
    tokenizer = embedded_tokenizer()
    encoder = ExampleEncoder(tokenizer, LayoutFormatter("chatml", LAYOUTS["chatml"]), max_seq_length=512)
    passages = [Document(page_content=f"Passage {i} about descaling.", metadata={"title": f"T{i}"}) for i in range(3)]

    class FixedRetriever:
        def retrieve(self, queries: list[str], k: int) -> list[list[tuple[Document, float]]]:
            return [[(d, 1.0 - i / 10) for i, d in enumerate(passages[:k])] for _ in queries]

    conversation = Conversation(Assistant(tiny_model(tokenizer), encoder, FixedRetriever(), top_k=2, max_new_tokens=3))
    first = conversation.ask(QUESTION)
    second = conversation.ask(FOLLOW_UP)
    history = (Turn("user", QUESTION), Turn("assistant", first.answer))
    expected = encoder.prompt_ids(Example(FOLLOW_UP, "", tuple(passages[:2]), chat_history=history), passages[:2])
    assert second.prompt_ids == expected
    assert [d for d, _ in second.sources] == passages[:2]
    assert second.to_dict()["sources"][0] == {
        "title": "T0",
        "source": "",
        "score": 1.0,
        "page_content": passages[0].page_content,
    }
    conversation.reset()
    assert conversation.ask(QUESTION).prompt_ids == first.prompt_ids


def test_settings_come_from_the_training_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    saved = {
        "resolved_formatter": {"name": "prefixes", "options": {"user_prefix": "Q"}},
        "resolved_retriever": {"name": "dense-faiss", "options": {"batch_size": 8}},
        "eval_embedding_model": "some/embedder",
        "full_dataset_file_path": str(DOCUMENTS),
        "full_dataset_index_path": None,
        "top_k": 2,
        "max_new_tokens": 7,
        "max_seq_length": 1024,
    }
    (run / "rqa_args.json").write_text(json.dumps(saved))
    settings = resolve_settings(str(run))
    assert (settings.formatter, settings.formatter_options) == ("prefixes", {"user_prefix": "Q"})
    assert (settings.retriever, settings.retriever_options) == ("dense-faiss", {"batch_size": 8})
    assert (settings.embedding_model, settings.documents, settings.index) == (
        "some/embedder",
        str(DOCUMENTS),
        str(run / "index"),
    )
    assert (settings.top_k, settings.max_new_tokens, settings.max_seq_length) == (2, 7, 1024)
    given = resolve_settings(str(run), formatter="chatml", top_k=5, index="elsewhere")
    assert (given.formatter, given.formatter_options, given.top_k, given.index) == ("chatml", {}, 5, "elsewhere")
    (run / "rqa_args.json").write_text(json.dumps({**saved, "full_dataset_file_path": "gone.jsonl"}))
    with pytest.raises(RqaError, match=r"gone.jsonl \(full_dataset_file_path in .*rqa_args.json\) does not exist"):
        resolve_settings(str(run))
    with pytest.raises(RqaError, match="no document database: pass --documents"):
        resolve_settings(None)
