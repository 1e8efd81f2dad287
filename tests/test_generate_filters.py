"""``rqa generate``'s passage filters as a registry kind: built-ins, plugins that see the whole database, options,
unknown names, ``module:function`` filters; and the hard-negative selection both miners share."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from rqa.builtin.passage_filters import boilerplate, short
from rqa.cli import main
from rqa.errors import RqaError
from rqa.generate.filters import apply_passage_filters, choose_filters, split_specs
from rqa.generate.plan import mine_negatives
from rqa.plugins import get_plugins, load_plugins
from rqa.retriever_data import select_negatives
from rqa.schema import Document

NAVIGATION = "Sign in to see prices\nBrowse brands by category\nContact our support team"
DOCUMENTS = [
    Document("Descale the kettle every four weeks with a spoon of citric acid in warm water, then rinse it twice."),
    Document("Home"),
    *[Document(f"{NAVIGATION}\nPage {n}") for n in range(3)],
    Document("Charge the scooter overnight before the first ride and keep it indoors when the weather is cold."),
]

# A third-party passage filter that needs the database: it keeps passages holding a word no other passage holds.
RARE_WORDS = '''
    import re

    from rqa import hookimpl


    def words(document):
        return set(re.findall(r"[a-z]+", document.page_content.lower()))


    def rare_words(documents, min_rare: int = 1):
        """Removes passages without min_rare words of their own (option: min_rare)."""
        if min_rare < 1:
            raise ValueError(f"min_rare must be at least 1, got {min_rare}")
        seen = {}
        for document in documents:
            for word in words(document):
                seen[word] = seen.get(word, 0) + 1
        return lambda document: sum(seen[word] == 1 for word in words(document)) >= min_rare


    @hookimpl
    def register_passage_filters(register):
        register("rare-words", rare_words)
'''


@pytest.fixture
def fresh_plugins() -> Iterator[None]:
    """``choose_filters`` reads the process-wide plugin set: rebuild it around a test that installs a plugin."""
    get_plugins.cache_clear()
    yield
    get_plugins.cache_clear()


def keeps(values: list[str], documents: list[Document] = DOCUMENTS) -> list[int]:
    return apply_passage_filters(documents, choose_filters(values))[0]


def test_the_builtins_are_registered_components_with_options():
    registry = load_plugins()["passage_filters"]
    assert {c.name for c in registry if c.plugin == "rqa-passage-filters"} == {"boilerplate", "short"}
    assert keeps(["short"]) == [0, 2, 3, 4, 5]  # "Home" is a stub
    assert keeps(["short:min_words=18"]) == [0]
    assert keeps(["boilerplate"]) == [0, 1, 5]  # three of four lines recur in three passages
    assert keeps(["boilerplate:max_share=0.8"]) == list(range(6))
    assert keeps(["short,boilerplate:min_repeats=4,max_share=0.5"]) == [0, 2, 3, 4, 5]  # options continue a filter


def test_the_builtins_judge_as_before():
    assert short()(Document(" ".join(["word"] * 12))) and not short()(Document(" ".join(["word"] * 11)))
    keep = boilerplate(DOCUMENTS)
    assert [keep(d) for d in DOCUMENTS] == [True, True, False, False, False, True]


def test_the_report_counts_each_filter_in_order_with_what_it_removes():
    documents = [*DOCUMENTS, Document("  ")]
    kept, report = apply_passage_filters(documents, choose_filters(["short", "boilerplate"]))
    assert kept == [0, 5]
    assert {reason: info["removed"] for reason, info in report.items()} == {
        "empty_passage": 1,
        "short": 1,
        "boilerplate": 3,
    }
    assert (
        report["short"]["means"]
        == "Removes passages under min_words words (12 by default): headings, link lists, stubs (--filter short)"
    )


def test_specs_split_on_commas_and_keep_their_options():
    assert split_specs(["short,boilerplate", "roundtrip"]) == ["short", "boilerplate", "roundtrip"]
    assert split_specs(["boilerplate:max_share=0.6,min_repeats=4,short"]) == [
        "boilerplate:max_share=0.6,min_repeats=4",
        "short",
    ]
    assert split_specs(["a:b=1", "c=2"]) == ["a:b=1", "c=2"]  # a new --filter value starts a new filter
    choice = choose_filters(["roundtrip", "short"])
    assert choice.roundtrip and [c.name for c in choice.passage] == ["short"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["shrot"], "unknown passage filter 'shrot'. Did you mean 'short'? Available: boilerplate, short, roundtrip;"),
        (["short:min_word=3"], "unknown option 'min_word' (accepted: min_words)"),
        (["short:min_words=many"], "option 'min_words': expected int"),
        (["short", "short:min_words=3"], "--filter short is given twice"),
        (["no.such.module:keep"], "--filter no.such.module:keep: cannot import it"),
    ],
)
def test_bad_filters_fail_before_anything_loads(values: list[str], expected: str):
    with pytest.raises(RqaError) as error:
        choose_filters(values)
    assert expected in str(error.value)


def test_a_bad_option_value_fails_when_the_filter_is_built():
    with pytest.raises(RqaError, match="passage filter 'short': min_words must be at least 1"):
        keeps(["short:min_words=0"])


def test_a_plugin_filter_sees_the_whole_database(make_plugin, fresh_plugins, capsys):
    make_plugin("rare-words", RARE_WORDS)
    documents = [Document("the kettle"), Document("the kettle"), Document("the toaster"), Document("the")]
    assert keeps(["rare-words"], documents) == [2]
    assert keeps(["rare-words:min_rare=2"], documents) == []
    main(["list-plugins", "--kind", "passage_filters", "--json"])
    listed = {c["name"]: c["plugin"] for c in json.loads(capsys.readouterr().out)["components"]}
    assert listed == {"boilerplate": "rqa-passage-filters", "rare-words": "rare-words", "short": "rqa-passage-filters"}


def test_a_module_function_filter_still_works(tmp_path, monkeypatch):
    (tmp_path / "my_filters.py").write_text(
        'def no_home(document):\n    """Removes passages that are only the word Home."""\n'
        '    return document.page_content != "Home"\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    kept, report = apply_passage_filters(DOCUMENTS, choose_filters(["my_filters:no_home"]))
    assert kept == [0, 2, 3, 4, 5] and report["my_filters:no_home"]["removed"] == 1
    means = report["my_filters:no_home"]["means"]
    assert means == "Removes passages that are only the word Home (--filter my_filters:no_home)"
    sys.modules.pop("my_filters", None)


class Ranked:
    """A retriever that returns a fixed ranking of the database, whatever the query."""

    def __init__(self, documents: list[Document], order: list[int]) -> None:
        self.ranking = [(documents[i], 1.0) for i in order]

    def retrieve(self, queries, k):
        return [self.ranking[:k] for _ in queries]


def test_both_miners_share_one_selection_of_negatives():
    kettle = Document("Descale the kettle every four weeks.")
    documents = [
        kettle,
        Document("Descale the kettle every four weeks!", "Title: Care"),  # a near copy of the gold passage
        Document("Charge the scooter overnight."),
        Document("Charge the scooter overnight."),  # the same passage twice
        Document("Fold the umbrella when it is dry."),
    ]
    taken = select_negatives(documents, 2, lambda d: d.page_content == kettle.page_content)
    assert taken == documents[1:3]  # an exact test: the near copy is a negative
    assert select_negatives(documents, 5, lambda d: False, taken=[kettle.page_content]) == [
        documents[1],
        documents[2],
        documents[4],
    ]
    assert mine_negatives(Ranked(documents, [0, 1, 2, 3, 4]), documents, [0], 2) == [[3, 4]]  # near copies too
