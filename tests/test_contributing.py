"""CONTRIBUTING.md's plugin examples, installed and run: the guide cannot drift from the code."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from rqa import contracts
from rqa.errors import RqaError
from rqa.plugins import load_plugins
from rqa.schema import Document, Example, Turn
from rqa.scoring import headline_keys, run_key_info

GUIDE = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"
BLOCK = re.compile(r"<!-- plugin: ([a-z0-9][a-z0-9._-]*) -->\n```python\n(.*?)```", re.DOTALL)
EXPECTED = {  # plugin name -> what its block registers
    "exact-match": {("metrics", "exact-match")},
    "focal-loss": {("losses", "focal")},
    "gemma-format": {("formatters", "gemma"), ("formatters", "plain-qa")},
    "word-overlap": {("retrievers", "word-overlap")},
    "symmetric-loss": {("retriever_losses", "symmetric")},
    "extractive-generator": {("generators", "extractive")},
    "tidy-passages": {("passage_filters", "long"), ("passage_filters", "no-copies")},
}
DOCS = [Document("The capital of France is Paris."), Document("Berlin is in Germany."), Document("Rome, Italy.")]
EXAMPLE = Example(
    question="What is the capital of France?",
    gold_answer="Paris",
    gold_docs=(DOCS[0],),
    chat_history=(Turn("user", "Hello"), Turn("assistant", "Hi!")),
)


@functools.cache
def embedder() -> Any:
    """The embedded MiniLM: the model a retriever loss trains."""
    from sentence_transformers import SentenceTransformer

    from rqa.models import resolve_embedder

    return SentenceTransformer(resolve_embedder(None))


def guide_plugins() -> dict[str, str]:
    return dict(BLOCK.findall(GUIDE.read_text()))


def test_the_guide_has_an_example_for_every_kind():
    assert set(guide_plugins()) == set(EXPECTED)
    kinds = {kind for registered in EXPECTED.values() for kind, _ in registered}
    assert kinds == set(contracts.CONTRACTS)


@pytest.fixture
def installed(make_plugin):
    return {name: make_plugin(name, source, package=f"rqa-{name}") for name, source in guide_plugins().items()}


def test_list_plugins_lists_every_example(installed, run_rqa):
    result = run_rqa("list-plugins", "--json", "--strict", env={"RQA_LOAD_PLUGINS": ",".join(installed)})

    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    for plugin, registered in EXPECTED.items():
        listed = {(c["kind"], c["name"]) for c in data["components"] if c["plugin"] == plugin}
        assert listed == registered, plugin
        assert all(c["description"] for c in data["components"] if c["plugin"] == plugin)


def test_every_example_builds_and_satisfies_its_contract(installed):
    plugin_set = load_plugins()
    assert plugin_set.failed == [], [p.error for p in plugin_set.failed]
    for registered in EXPECTED.values():
        for kind, name in registered:
            assert contracts.missing_statically(kind, plugin_set[kind].get(name).factory) == []
            built = plugin_set[kind].build(name, top_k=2, model=embedder(), documents=DOCS)
            assert contracts.missing(kind, built) == [], (kind, name)


def test_the_metric_example_scores_rows(installed):
    metric = load_plugins()["metrics"].build("exact-match")
    metric.update(
        [
            {"generated_answer": "The Paris!", "gold_answer": "paris"},
            {"generated_answer": "Berlin", "gold_answer": "Paris"},
        ]
    )

    assert metric.compute() == {"gen/exact_match": 0.5}
    assert isinstance(metric, contracts.SupportsPerRow)
    assert isinstance(metric, contracts.SupportsMetadata)
    assert headline_keys(run_key_info({"exact-match": lambda: metric})) == ["gen/exact_match"]


def test_the_loss_example_computes_and_matches_cross_entropy_at_gamma_zero(installed):
    torch = pytest.importorskip("torch")
    losses = load_plugins()["losses"]
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 2, 3, 4, 5])

    plain = losses.build("focal", {"gamma": "0"})(logits, targets, num_items=10)
    focal = losses.build("focal", {"gamma": "2"})(logits, targets, num_items=10)

    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="sum") / 10
    assert plain.item() == pytest.approx(expected.item())
    assert 0 < focal.item() < plain.item()
    assert losses.build("focal").supervise == "answer"


def test_the_formatter_examples_render_pieces(installed):
    formatters = load_plugins()["formatters"]
    for name in ("gemma", "plain-qa"):
        formatter = formatters.build(name)
        rendered = formatter.render(EXAMPLE, DOCS[:1], with_answer=True)
        kinds = [p.kind for p in rendered.pieces]
        assert kinds.count("answer") == 1 and kinds[-1] == "answer", name
        assert "reply" in kinds, name
        assert rendered.answer.endswith(formatter.end_of_turn), name
        assert "Paris." in rendered.prompt and "Hello" in rendered.prompt
        prompt_only = formatter.render(EXAMPLE, DOCS[:1], with_answer=False)
        assert prompt_only.prompt == rendered.prompt, name  # generation starts from the training prompt
    assert formatters.build("gemma").render(EXAMPLE, DOCS[:1]).text.startswith("<bos><start_of_turn>user\n")


def test_the_retriever_example_indexes_reuses_and_retrieves(installed, tmp_path):
    retrievers = load_plugins()["retrievers"]
    index_dir = tmp_path / "index"

    assert retrievers.build("word-overlap").build(DOCS, index_dir) is True
    retriever = retrievers.build("word-overlap")
    assert retriever.build(DOCS, index_dir) is False  # the saved index matches: reused
    (hits,) = retriever.retrieve(["capital of France"], 2)

    assert hits[0][0].page_content == DOCS[0].page_content
    assert len(hits) == 2 and hits[0][1] >= hits[1][1]


def test_the_generator_example_answers_and_chats(installed):
    generator = load_plugins()["generators"].build("extractive")
    assert generator.answer([EXAMPLE], [DOCS], max_new_tokens=16) == ["The capital of France is Paris."]
    assert generator.chat([[{"role": "user", "content": "Hello there"}]]) == ["Hello there"]


def test_the_passage_filter_examples_leave_out_passages_as_rqa_generate_runs_them(installed):
    from rqa.generate.filters import apply_passage_filters, choose_filters
    from rqa.plugins import get_plugins

    documents = [*DOCS, Document("Berlin  is in Germany.")]
    get_plugins.cache_clear()  # rqa generate's process-wide plugin set, with the examples installed
    try:
        kept, report = apply_passage_filters(documents, choose_filters(["no-copies,long:max_words=4"]))
    finally:
        get_plugins.cache_clear()
    assert kept == [2]  # 0 is over four words; 1 and 3 are one passage twice
    assert (report["no-copies"]["removed"], report["long"]["removed"]) == (2, 1)
    with pytest.raises(RqaError, match="max_copies must be at least 1"):
        load_plugins()["passage_filters"].build("no-copies", {"max_copies": "0"}, documents=documents)
