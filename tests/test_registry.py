"""Registries: unknown names, duplicates, option checking and conversion, component specs."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from rqa.errors import (
    ComponentOptionError,
    DuplicateComponentError,
    InvalidComponentError,
    RqaError,
    UnknownComponentError,
)
from rqa.formatting import Formatter
from rqa.plugins import PluginSet, load_plugins
from rqa.registry import Component, Registry, describe, parse_component_spec, validate_options

EXAMPLE = Path(__file__).resolve().parents[1] / "example"


@pytest.fixture(scope="module")
def builtins() -> PluginSet:
    """The real plugin set (built-ins through their entry points), loaded once for this module."""
    return load_plugins()


def component(factory: Any, name: str = "thing", kind: str = "formatters") -> Component:
    return Component(
        kind=kind,
        name=name,
        factory=factory,
        plugin="test-plugin",
        package="rqa-test",
        version="1.0",
        description=describe(factory),
    )


def registry_of(*factories: Any, kind: str = "formatters") -> Registry:
    registry = Registry(kind)
    for factory in factories:
        registry.add(component(factory, name=factory.__name__.replace("_", "-"), kind=kind))
    return registry


def typed(
    ratio: float = 1.0,
    count: int = 1,
    flag: bool = False,
    label: str = "x",
    limit: int | None = 5,
    ids: list[int] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """A factory with one option of each simple annotated type."""
    return {"ratio": ratio, "count": count, "flag": flag, "label": label, "limit": limit, "ids": ids}


def needs_width(width: int, tokenizer: Any = None) -> tuple[int, Any]:
    """A factory with a required option and a runtime context argument."""
    return width, tokenizer


def takes_kwargs(alpha: int = 0, **extra: Any) -> dict[str, Any]:
    return {"alpha": alpha, **extra}


def no_options() -> str:
    return "built"


# --- errors ----------------------------------------------------------------------------------------------


def test_error_types_are_user_errors_and_not_key_errors():
    for error_type in (UnknownComponentError, DuplicateComponentError, ComponentOptionError, InvalidComponentError):
        assert issubclass(error_type, RqaError)
        assert not issubclass(error_type, KeyError)


# --- unknown names ---------------------------------------------------------------------------------------


def test_unknown_name_suggests_the_closest_and_lists_available(builtins):
    formatters = builtins["formatters"]

    with pytest.raises(UnknownComponentError) as caught:
        formatters.get("chatmll")

    message = str(caught.value)
    assert not isinstance(caught.value, KeyError)
    assert message.startswith("unknown formatter 'chatmll'. Did you mean 'chatml'? Available: ")
    assert message[0] not in "'\"" and message[-1] not in "'\""
    listed = message.split("Available: ", 1)[1].split(", ")
    assert listed == formatters.names()
    assert {"chatml", "mistral", "prefixes", "auto"} <= set(listed)


def test_unknown_name_without_a_close_match(builtins):
    with pytest.raises(UnknownComponentError) as caught:
        builtins["losses"].get("zzzzzzzz")

    message = str(caught.value)
    assert "Did you mean" not in message
    assert message.startswith("unknown loss 'zzzzzzzz'. Available: ")
    assert "label-smoothed-ce" in message


def test_unknown_name_in_an_empty_registry():
    with pytest.raises(UnknownComponentError, match=r"^unknown metric 'f1'\. Available: \(none installed\)$"):
        Registry("metrics").get("f1")


def test_unknown_name_points_at_plugins_that_failed_to_load():
    registry = registry_of(typed)
    registry.load_failures.append("plugin 'extra' (rqa-extra==2.0): ModuleNotFoundError: No module named 'x'")

    with pytest.raises(UnknownComponentError) as caught:
        registry.get("typd")

    assert str(caught.value) == (
        "unknown formatter 'typd'. Did you mean 'typed'? Available: typed. It may come from a plugin that failed "
        "to load: plugin 'extra' (rqa-extra==2.0): ModuleNotFoundError: No module named 'x' "
        "(rqa list-plugins shows the full error)"
    )


def test_create_with_an_unknown_name(builtins):
    with pytest.raises(UnknownComponentError, match="Did you mean 'answer-ce'"):
        builtins["losses"].create("answer_ce")


# --- registry basics -------------------------------------------------------------------------------------


def test_registry_contents_are_sorted_by_name():
    registry = registry_of(typed, no_options, needs_width)

    assert registry.names() == ["needs-width", "no-options", "typed"]
    assert [c.name for c in registry] == registry.names()
    assert len(registry) == 3
    assert "typed" in registry and "missing" not in registry
    assert registry.get("typed").description == "A factory with one option of each simple annotated type."
    assert registry.get("no-options").description == ""


def test_adding_a_duplicate_names_both_providers():
    registry = Registry("losses")
    registry.add(component(no_options, name="dup", kind="losses"))
    second = Component("losses", "dup", typed, "other-plugin", None, None, "")

    with pytest.raises(DuplicateComponentError) as caught:
        registry.add(second)

    assert str(caught.value).startswith(
        "loss 'dup' is registered twice: by plugin 'test-plugin' (rqa-test==1.0) and by "
        "plugin 'other-plugin' (unknown package)"
    )
    assert registry.get("dup").plugin == "test-plugin"


def test_check_changes_nothing():
    registry = Registry("formatters")
    registry.check(component(no_options))
    assert len(registry) == 0


# --- options ---------------------------------------------------------------------------------------------


def test_create_converts_string_options_by_annotation(builtins):
    loss = builtins["losses"].create("label-smoothed-ce", {"smoothing": "0.2"})

    assert loss.smoothing == 0.2
    assert type(loss.smoothing) is float
    assert loss.supervise == "answer"


def test_validate_options_converts_without_building(builtins):
    label_smoothed = builtins["losses"].get("label-smoothed-ce")

    assert validate_options(label_smoothed, {"smoothing": "0.2"}) == {"smoothing": 0.2}
    assert validate_options(label_smoothed, {}) == {}


def test_validate_options_returns_every_option_typed_and_is_idempotent():
    options = {"ratio": "0.5", "count": "3", "flag": "yes", "label": "7", "limit": "none", "ids": "1;2"}
    typed_options = validate_options(component(typed), options)

    assert typed_options == {"ratio": 0.5, "count": 3, "flag": True, "label": "7", "limit": None, "ids": [1, 2]}
    assert type(typed_options["ratio"]) is float and type(typed_options["count"]) is int
    assert validate_options(component(typed), typed_options) == typed_options


@pytest.mark.parametrize(
    ("spec", "pairs"),
    [("label-smoothed-ce:smoothing=0.1", ()), ("label-smoothed-ce", ("smoothing=0.1",))],
)
def test_choose_keeps_the_converted_option_values(spec, pairs):
    from rqa.pipeline import choose

    choice = choose("losses", spec, pairs)

    assert choice.options == {"smoothing": 0.1}
    assert type(choice.options["smoothing"]) is float
    assert choice.build().smoothing == 0.1


def test_resolved_arguments_hold_option_values_as_json_numbers(tmp_path):
    import json

    from rqa.config import parse_train_args
    from rqa.runs import RunRecord
    from rqa.training import plan_training

    args = parse_train_args(
        ["--train_file", str(EXAMPLE / "train_w_qa.jsonl"), "--output_dir", str(tmp_path / "run"),
         "--loss", "label-smoothed-ce", "--loss_option", "smoothing=0.1"]
    )  # fmt: skip
    plan = plan_training(args)
    written = json.dumps(RunRecord.create(tmp_path / "run", args.to_dict(), loss=plan.loss).to_json())

    assert '"resolved_loss": {"name": "label-smoothed-ce", "options": {"smoothing": 0.1}}' in written
    assert json.loads(written)["resolved_loss"]["options"]["smoothing"] == 0.1


def test_unknown_option_names_the_accepted_ones(builtins):
    with pytest.raises(ComponentOptionError) as caught:
        builtins["losses"].create("label-smoothed-ce", {"smoothin": "0.2"})

    assert str(caught.value) == "loss 'label-smoothed-ce': unknown option 'smoothin' (accepted: smoothing)"


def test_option_for_a_component_without_options(builtins):
    with pytest.raises(ComponentOptionError, match=r"unknown option 'x' \(accepted: none\)"):
        builtins["losses"].create("answer-ce", {"x": "1"})


def test_bad_value_is_a_clear_error(builtins):
    with pytest.raises(ComponentOptionError) as caught:
        builtins["losses"].create("label-smoothed-ce", {"smoothing": "abc"})

    assert str(caught.value) == "loss 'label-smoothed-ce': option 'smoothing': expected float, got 'abc'"


def test_every_problem_is_reported_at_once(builtins):
    with pytest.raises(ComponentOptionError) as caught:
        validate_options(builtins["losses"].get("label-smoothed-ce"), {"smoothing": "abc", "temperature": "2"})

    message = str(caught.value)
    assert message.startswith("loss 'label-smoothed-ce': ")
    assert "option 'smoothing': expected float, got 'abc'" in message
    assert "unknown option 'temperature' (accepted: smoothing)" in message


def test_value_rejected_by_the_factory_becomes_an_option_error(builtins):
    with pytest.raises(ComponentOptionError) as caught:
        builtins["losses"].create("label-smoothed-ce", {"smoothing": "1.5"})

    assert str(caught.value) == "loss 'label-smoothed-ce': smoothing must be in [0, 1), got 1.5"


def test_conversions_for_each_simple_type():
    registry = registry_of(typed)

    built = registry.create(
        "typed",
        {"ratio": "0.5", "count": "3", "flag": "yes", "label": "42", "limit": "none", "ids": "1; 2;;3"},
    )

    assert built == {"ratio": 0.5, "count": 3, "flag": True, "label": "42", "limit": None, "ids": [1, 2, 3]}
    assert registry.create("typed", {"flag": "OFF", "limit": "7"}) == {**typed(), "flag": False, "limit": 7}


def test_non_string_values_pass_through_unchanged():
    registry = registry_of(typed)

    assert registry.create("typed", {"ratio": 2, "ids": [4]})["ratio"] == 2
    assert registry.create("typed", {"ratio": 2, "ids": [4]})["ids"] == [4]


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"count": "1.5"}, "option 'count': expected int, got '1.5'"),
        ({"flag": "maybe"}, "option 'flag': expected true or false, got 'maybe'"),
        ({"ids": "1;x"}, "option 'ids': expected int, got 'x'"),
    ],
)
def test_bad_values_of_each_type(options, problem):
    with pytest.raises(ComponentOptionError) as caught:
        registry_of(typed).create("typed", options)
    assert str(caught.value) == f"formatter 'typed': {problem}"


def test_missing_required_option_and_runtime_context():
    registry = registry_of(needs_width)

    with pytest.raises(ComponentOptionError, match=r"missing required option 'width'$"):
        registry.create("needs-width")
    # the runtime context is given by rqa, not the user: it is neither an option nor missing
    assert registry.create("needs-width", {"width": "4"}, tokenizer="tok") == (4, "tok")
    with pytest.raises(ComponentOptionError, match=r"unknown option 'tokenizer' \(accepted: width\)"):
        validate_options(registry.get("needs-width"), {"width": "4", "tokenizer": "x"}, context={"tokenizer"})


def test_context_goes_only_where_it_is_accepted(builtins):
    metrics = builtins["metrics"]

    assert metrics.create("retrieval", top_k=7).k == 7
    assert metrics.create("token-f1", top_k=7).compute() == {}
    assert registry_of(takes_kwargs).create("takes-kwargs", {"alpha": "2"}, top_k=3) == {"alpha": 2, "top_k": 3}


def test_variadic_parameters_are_not_options():
    with pytest.raises(ComponentOptionError, match=r"unknown option 'extra' \(accepted: alpha\)"):
        registry_of(takes_kwargs).create("takes-kwargs", {"extra": "1"})


class ClassFactory(Formatter):
    """A factory that is a class, in a module using ``from __future__ import annotations``."""

    def __init__(self, ratio: float = 1.0, flag: bool = False) -> None:
        self.ratio, self.flag = ratio, flag


def test_class_factory_options_are_converted():
    registry = Registry("formatters")
    registry.add(component(ClassFactory, name="class-factory"))

    built = registry.create("class-factory", {"ratio": "0.5", "flag": "false"})

    assert (built.ratio, built.flag) == (0.5, False)


def test_partial_factory_options_are_converted():
    registry = Registry("formatters")
    registry.add(component(functools.partial(typed, label="preset"), name="partial-factory"))

    built = registry.create("partial-factory", {"ratio": "0.5", "flag": "true"})

    assert (built["ratio"], built["flag"], built["label"]) == (0.5, True, "preset")


def test_partial_factory_description_is_not_partials_own_docstring():
    description = describe(functools.partial(typed, label="preset"))

    assert description in ("", "A factory with one option of each simple annotated type.")


def optional_list(names: list[str] | None = None) -> list[str] | None:
    return names


def test_optional_list_option_is_split():
    assert registry_of(optional_list).create("optional-list", {"names": "a;b"}) == ["a", "b"]


# --- component specs -------------------------------------------------------------------------------------


def test_parse_component_spec_with_inline_and_extra_options():
    assert parse_component_spec("label-smoothed-ce:smoothing=0.1", ["x=1"]) == (
        "label-smoothed-ce",
        {"smoothing": "0.1", "x": "1"},
    )


@pytest.mark.parametrize(
    ("spec", "pairs", "expected"),
    [
        ("chatml", None, ("chatml", {})),
        (" chatml ", [], ("chatml", {})),
        ("prefixes:user_prefix=Q,sep_sys=</s>", None, ("prefixes", {"user_prefix": "Q", "sep_sys": "</s>"})),
        ("retrieval:top_k=1", ["top_k=9"], ("retrieval", {"top_k": "9"})),  # later pairs win
        ("x", ["expr=a=b", " key =v"], ("x", {"expr": "a=b", "key": "v"})),
        ("x:a=1,", [], ("x", {"a": "1"})),
        ("x:a=", [], ("x", {"a": ""})),
    ],
)
def test_parse_component_spec_cases(spec, pairs, expected):
    assert parse_component_spec(spec, pairs) == expected


@pytest.mark.parametrize(("spec", "pairs"), [("x:oops", None), ("x", ["=1"]), ("x", ["novalue"])])
def test_parse_component_spec_rejects_malformed_pairs(spec, pairs):
    with pytest.raises(ComponentOptionError, match=r"for 'x' must look like key=value"):
        parse_component_spec(spec, pairs)


def test_parsed_spec_feeds_create(builtins):
    name, options = parse_component_spec("label-smoothed-ce:smoothing=0.25")

    assert builtins["losses"].create(name, options).smoothing == 0.25


def test_factory_faults_name_the_plugin_and_package() -> None:
    from rqa.errors import ComponentBuildError, InvalidComponentError
    from rqa.registry import Component, Registry

    def exploding():
        raise RuntimeError("GPU on fire")

    def not_a_retriever():
        return object()

    registry = Registry("retrievers")
    for name, factory in (("boom", exploding), ("hollow", not_a_retriever)):
        registry.add(Component("retrievers", name, factory, "acme", "rqa-acme", "1.2", ""))
    with pytest.raises(ComponentBuildError, match=r"retriever 'boom' from plugin 'acme' \(rqa-acme==1\.2\) failed"):
        registry.create("boom")
    registry.create("hollow")  # create builds anything; build also checks the component's interface
    with pytest.raises(InvalidComponentError) as caught:
        registry.build("hollow")
    assert str(caught.value) == (
        "retriever 'hollow' from plugin 'acme' (rqa-acme==1.2) built a object without build, retrieve: not a "
        "valid retriever (rqa.contracts.Retriever lists what a retriever needs)"
    )
