"""Component contracts: every built-in satisfies its kind's protocol, and what breaks one is named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rqa import contracts
from rqa.errors import InvalidComponentError
from rqa.plugins import load_plugins
from rqa.registry import KINDS, Component, Registry

EXAMPLE = Path(__file__).resolve().parents[1] / "example"


def registry_with(kind: str, factory: Any, name: str = "thing") -> Registry:
    registry = Registry(kind)
    registry.add(Component(kind, name, factory, "acme", "rqa-acme", "1.2", ""))
    return registry


def test_every_kind_has_a_contract_naming_what_the_core_reads():
    assert set(contracts.CONTRACTS) == set(KINDS)
    assert contracts.members("formatters") == ("end_of_turn", "render", "system_text")
    assert contracts.members("losses") == ("supervise", "__call__")
    assert contracts.members("retrievers") == ("build", "retrieve")
    assert contracts.members("metrics") == ("update", "compute")
    assert contracts.methods(contracts.SupportsPerRow) == ("per_row",)


def test_builtin_losses_and_metrics_satisfy_their_contracts():
    plugin_set = load_plugins()
    for kind in ("losses", "metrics"):
        for component in plugin_set[kind]:
            built = plugin_set[kind].build(component.name, top_k=3)
            assert contracts.missing(kind, built) == [], component.name
            assert isinstance(built, contracts.CONTRACTS[kind])


def test_builtin_metrics_offer_per_row_for_bootstrap_intervals():
    plugin_set = load_plugins()
    for component in plugin_set["metrics"]:
        assert isinstance(plugin_set["metrics"].build(component.name, top_k=3), contracts.SupportsPerRow)


def test_builtin_formatters_are_checked_without_a_tokenizer():
    plugin_set = load_plugins()
    for component in plugin_set["formatters"]:
        assert contracts.missing_statically("formatters", component.factory) == [], component.name
    chatml = plugin_set["formatters"].build("chatml")
    assert contracts.missing("formatters", chatml) == []


def test_a_loss_without_supervise_fails_at_build_naming_plugin_package_and_attribute():
    class Loss:
        def __call__(self, logits, targets, num_items=None):
            return 0.0

    with pytest.raises(InvalidComponentError) as caught:
        registry_with("losses", Loss, "half-loss").build("half-loss")

    assert str(caught.value) == (
        "loss 'half-loss' from plugin 'acme' (rqa-acme==1.2) built a Loss without supervise: not a valid loss "
        "(rqa.contracts.Loss lists what a loss needs)"
    )


def test_a_loss_with_an_unknown_supervise_value_fails():
    class Loss:
        supervise = "tokens"

        def __call__(self, logits, targets, num_items=None):
            return 0.0

    with pytest.raises(InvalidComponentError, match=r"without a valid supervise \(it is 'tokens'; expected 'answer'"):
        registry_with("losses", Loss).build("thing")


def test_a_loss_must_be_callable_on_its_class():
    class NotCallable:
        supervise = "answer"

    assert contracts.missing("losses", NotCallable()) == ["__call__"]


def test_end_of_turn_must_be_text():
    class Formatter:
        end_of_turn = None

        def render(self, example, passages, with_answer=True): ...

        def system_text(self, passages): ...

    assert contracts.missing("formatters", Formatter()) == ["a valid end_of_turn (it is a NoneType; expected a str)"]


def test_a_formatter_class_without_render_fails_before_it_is_built():
    class NoRender:
        end_of_turn = ""

        def __init__(self, tokenizer: Any = None) -> None:
            raise AssertionError("never built")

    registry = registry_with("formatters", NoRender, "no-render")

    with pytest.raises(InvalidComponentError, match=r"'no-render' from plugin 'acme' \(rqa-acme==1\.2\) builds a class "
                       r"without render, system_text"):  # fmt: skip
        registry.create("no-render")


def test_a_factory_annotated_to_return_a_class_is_checked_by_that_class():
    class Half:
        def update(self, rows): ...

    def make() -> Half:
        return Half()

    make.__annotations__["return"] = Half  # resolved, as a module-level annotation would be
    assert contracts.missing_statically("metrics", make) == ["compute"]
    assert contracts.missing_statically("metrics", lambda: Half()) == []  # unknown until built


BROKEN_LOSS_SOURCE = """
    from rqa import hookimpl


    class NoSupervise:
        def __call__(self, logits, targets, num_items=None):
            return logits.sum()


    def broken_loss():
        \"\"\"A loss that forgets to say what it supervises.\"\"\"
        return NoSupervise()


    @hookimpl
    def register_losses(register):
        register("broken-loss", broken_loss)
"""


def test_dry_run_rejects_a_loss_without_supervise_naming_the_plugin(make_plugin, run_rqa, tmp_path):
    make_plugin("broken-loss", BROKEN_LOSS_SOURCE, package="rqa-broken-loss", version="2.0")

    result = run_rqa(
        "train",
        "--train_file", str(EXAMPLE / "train_w_qa.jsonl"),
        "--output_dir", str(tmp_path / "run"),
        "--dry_run", "true",
        "--loss", "broken-loss",
    )  # fmt: skip

    assert result.returncode == 1, result.stdout + result.stderr
    error = " ".join(result.stderr.split())
    assert "loss 'broken-loss' from plugin 'broken-loss' (rqa-broken-loss==2.0)" in error
    assert "without supervise" in error
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_list_plugins_still_lists_a_plugin_whose_component_breaks_its_contract(make_plugin, run_rqa):
    make_plugin("broken-loss", BROKEN_LOSS_SOURCE)

    result = run_rqa("list-plugins", "--json", "--kind", "losses")

    assert result.returncode == 0, result.stderr
    assert "broken-loss" in {c["name"] for c in json.loads(result.stdout)["components"]}
