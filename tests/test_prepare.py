"""``rqa prepare``: raw articles chunked by tokens into rqa's document shape, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
from helpers import embedded_tokenizer
from test_schema import localrqa_pickle

from rqa.prepare import Chunker, html_to_text, percentile

ROOT = Path(__file__).resolve().parents[1]
FAIRE_DOCS = ROOT.parent / "shared" / "data" / "faire" / "docs.jsonl"
RQA = str(Path(sys.executable).parent / "rqa")


def rqa(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([RQA, *args], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def token_count(text: str) -> int:
    return len(embedded_tokenizer()(text, add_special_tokens=False)["input_ids"])


def assert_well_formed(rows: list[dict], chunk_size: int) -> None:
    """Every chunk fits, carries LocalRQA's layout, and starts inside the chunk before it."""
    for row in rows:
        meta = row["metadata"]
        assert (
            row["fmt_content"] == f"Source: {meta['source']}\nTitle: {meta['title']}\nContent:\n{row['page_content']}"
        )
        assert token_count(row["page_content"]) <= chunk_size
    neighbours = [(a, b) for a, b in pairwise(rows) if b["metadata"]["chunk_index"] == a["metadata"]["chunk_index"] + 1]
    assert neighbours
    for before, after in neighbours:
        assert after["page_content"][:20] in before["page_content"], (before["page_content"], after["page_content"])


@pytest.mark.skipif(not FAIRE_DOCS.exists(), reason="the Faire data is not available")
def test_faire_articles_chunk_to_the_order_of_localrqa_passages(tmp_path: Path) -> None:
    output = tmp_path / "faire.jsonl"
    result = rqa("prepare", "--input", str(FAIRE_DOCS), "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_jsonl(output)
    assert 1000 <= len(rows) <= 2500  # LocalRQA's database holds 1758 passages; rqa makes 1348 at 400/50
    assert_well_formed(rows, 400)
    for label in ("documents", "964", "chunks", f"{len(rows)}", "tokens p50", "tokens p90", "tokens max"):
        assert label in result.stdout


HTML = """<html><head><title>Pairing the kettle</title><style>body { color: red }</style></head>
<body><h1>Pair it</h1><script>var secret = 1;</script>
<p>Open the app and tap <b>Add kettle</b>. Hold the Power button for three seconds.</p>
<ul><li>The light blinks blue.</li><li>The app finds the kettle.</li></ul></body></html>"""


def write_folder(root: Path) -> Path:
    paragraph = "Descaling removes limescale from the heating plate. It keeps the kettle fast and quiet. "
    (root / "guides").mkdir(parents=True)
    (root / "guides" / "descale.md").write_text("# How to descale\n\n" + "\n\n".join([paragraph * 3] * 6))
    (root / "notes.txt").write_text(
        " ".join(f"word{i}" for i in range(300))
    )  # one sentence longer than a chunk: cut by tokens
    (root / "pair.html").write_text(HTML)
    (root / "ignored.pdf").write_bytes(b"%PDF")
    return root


def test_folder_of_markdown_text_and_html(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "docs")
    output = tmp_path / "out" / "documents.jsonl"
    result = rqa("prepare", "--input", str(folder), "-o", str(output), "--chunk-size", "60", "--chunk_overlap", "15")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_jsonl(output)
    assert {r["metadata"]["source"] for r in rows} == {"guides/descale.md", "notes.txt", "pair.html"}
    titles = {r["metadata"]["source"]: r["metadata"]["title"] for r in rows}
    assert titles == {"guides/descale.md": "How to descale", "notes.txt": "notes", "pair.html": "Pairing the kettle"}
    assert_well_formed(rows, 60)
    by_source = {source: [r for r in rows if r["metadata"]["source"] == source] for source in titles}
    assert len(by_source["notes.txt"]) > 5 and len(by_source["guides/descale.md"]) > 3
    html_text = by_source["pair.html"][0]["page_content"]
    assert "secret" not in html_text and "color" not in html_text
    assert "- The light blinks blue." in html_text
    assert "tokens p90" in result.stdout and "chunks" in result.stdout


def test_broken_article_line_names_file_line_and_field(tmp_path: Path) -> None:
    good = json.dumps({"text": "Some text.", "title": "T", "source": "s"})
    path = tmp_path / "docs.jsonl"
    path.write_text(good + "\n" + json.dumps({"title": "no text"}) + "\n")
    result = rqa("prepare", "--input", str(path), "--output", str(tmp_path / "out.jsonl"))
    assert result.returncode == 1
    assert "docs.jsonl:2: field 'text': is missing" in result.stderr
    path.write_text(good + "\n" + '{"text": "cut' + "\n")
    result = rqa("prepare", "--input", str(path), "--output", str(tmp_path / "out.jsonl"))
    assert result.returncode == 1 and "docs.jsonl:2: is not valid JSON" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_from_pickle_converts_a_localrqa_database(tmp_path: Path) -> None:
    documents = [
        {"page_content": "A", "fmt_content": "Source: s\nA", "metadata": {"source": "s"}},
        {"page_content": "B", "fmt_content": "Source: t\nB", "metadata": "{'source': 't', 'seq_num': 2}"},
    ]
    pickle_path = localrqa_pickle(tmp_path / "documents.pkl", documents)
    output = tmp_path / "documents.jsonl"
    result = rqa("prepare", "--from-pickle", str(pickle_path), "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_jsonl(output) == [
        {"page_content": "A", "fmt_content": "Source: s\nA", "metadata": {"source": "s"}},
        {"page_content": "B", "fmt_content": "Source: t\nB", "metadata": {"source": "t", "seq_num": 2}},
    ]
    assert "documents" in result.stdout and "tokens max" in result.stdout


def test_exactly_one_input_is_required(tmp_path: Path) -> None:
    result = rqa("prepare", "--output", str(tmp_path / "out.jsonl"))
    assert result.returncode == 1 and "exactly one of --input" in result.stderr


def test_chunker_keeps_paragraphs_whole_and_overlaps_with_sentences() -> None:
    sentences = [f"Sentence number {i} talks about the kettle." for i in range(40)]
    paragraphs = [" ".join(sentences[i : i + 4]) for i in range(0, 40, 4)]
    chunker = Chunker(embedded_tokenizer(), chunk_size=50, chunk_overlap=12)
    chunks = chunker.split("\n\n".join(paragraphs))
    assert all(chunker.count(c) <= 50 for c in chunks)
    for before, after in pairwise(chunks):
        assert after.startswith("Sentence number")  # the overlap starts at a sentence boundary
        assert after.split(".")[0] in before  # and repeats the end of the chunk before
    assert all(paragraph in "".join(chunks) for paragraph in paragraphs[:1])
    assert Chunker(embedded_tokenizer(), 400, 50).split("  \n ") == []


def test_chunker_cuts_a_word_longer_than_a_chunk_by_tokens() -> None:
    text = "".join(f"{i:04d}" for i in range(300))  # no space, no sentence: only token cuts remain
    chunker = Chunker(embedded_tokenizer(), chunk_size=40, chunk_overlap=10)
    chunks = chunker.split(text)
    assert len(chunks) > 5 and all(chunker.count(c) <= 40 for c in chunks)
    assert all(after[:8] in before for before, after in pairwise(chunks))
    assert text.startswith(chunks[0]) and text.endswith(chunks[-1])


def test_chunker_rejects_an_overlap_as_large_as_the_chunk() -> None:
    from rqa.errors import RqaError

    with pytest.raises(RqaError, match="chunk_overlap must be"):
        Chunker(embedded_tokenizer(), chunk_size=50, chunk_overlap=50)


def test_html_to_text_and_percentile() -> None:
    text, title = html_to_text("<h2>Heading</h2><p>One &amp; two</p><pre>a\n  b</pre>")
    assert (text, title) == ("Heading\n\nOne & two\n\na\n  b", "Heading")
    assert html_to_text("<html><head><title>T</title><body><p>Shown</p>")[0] == "Shown"  # head left open
    assert [percentile([5, 1, 3, 2, 4], q) for q in (50, 90, 100)] == [3, 5, 5]
    assert percentile([], 50) == 0
