"""Plugin discovery through real ``rqa`` entry points, broken plugins, conflicts and ``RQA_LOAD_PLUGINS``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rqa
from rqa.errors import UnknownComponentError
from rqa.plugins import PluginInfo, PluginSet, load_plugins
from rqa.registry import KINDS

GOOD_SOURCE = '''
    """A fake third-party rqa plugin."""
    from rqa.formatting import Formatter, Piece, Rendered
    from rqa.hookspecs import hookimpl


    class FakeFormatter(Formatter):
        """Wraps every question in brackets (fake formatter for tests)."""

        def __init__(self, width: int = 3) -> None:
            self.width = width

        def render(self, example, passages, with_answer=True):
            return Rendered((Piece(f"[{example.question}]", "prompt"),))


    @hookimpl
    def register_formatters(register):
        register("fake-fmt", FakeFormatter)
'''


def formatter_source(*names: object, factory: str = "make") -> str:
    """A plugin module registering each of ``names`` as a formatter built by ``factory``."""
    registrations = "\n".join(f"        register({name!r}, {factory})" for name in names)
    return f'''
    from rqa.hookspecs import hookimpl


    def make():
        """A formatter from a fake plugin."""
        return "formatter"


    @hookimpl
    def register_formatters(register):
{registrations}
'''


def plugin(plugin_set: PluginSet, name: str) -> PluginInfo:
    matches = [p for p in plugin_set.plugins if p.name == name]
    assert len(matches) == 1, [p.name for p in plugin_set.plugins]
    return matches[0]


def assert_builtins_work(plugin_set: PluginSet) -> None:
    for builtin in ("rqa-formatters", "rqa-losses", "rqa-retrievers", "rqa-metrics"):
        info = plugin(plugin_set, builtin)
        assert info.ok, info.error
        assert (info.package, info.version) == ("rqa", rqa.__version__)
    assert plugin_set["formatters"].get("chatml").plugin == "rqa-formatters"
    assert plugin_set["losses"].get("answer-ce").plugin == "rqa-losses"
    assert plugin_set["retrievers"].get("dense-faiss").plugin == "rqa-retrievers"
    assert plugin_set["metrics"].get("token-f1").plugin == "rqa-metrics"


# --- discovery -------------------------------------------------------------------------------------------


def test_entry_point_plugin_is_discovered_with_its_provenance(make_plugin):
    fake = make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")

    plugin_set = load_plugins()

    info = plugin(plugin_set, "fake")
    assert (info.ok, info.error, info.package, info.version) == (True, None, "rqa-fake-plugin", "0.1")
    assert not info.builtin
    component = plugin_set["formatters"].get("fake-fmt")
    assert component.kind == "formatters"
    assert (component.plugin, component.package, component.version) == ("fake", "rqa-fake-plugin", "0.1")
    assert component.description == "Wraps every question in brackets (fake formatter for tests)."
    assert component.provider == "plugin 'fake' (rqa-fake-plugin==0.1)"
    built = plugin_set["formatters"].create("fake-fmt", {"width": "5"})
    assert type(built).__module__ == fake.module
    assert built.width == 5
    assert_builtins_work(plugin_set)


def test_load_plugins_discovers_afresh_on_every_call(make_plugin):
    assert "fake-late" not in load_plugins()["formatters"]
    make_plugin("late", formatter_source("fake-late"))
    assert "fake-late" in load_plugins()["formatters"]


def test_builtins_load_through_their_entry_points():
    plugin_set = load_plugins()
    assert_builtins_work(plugin_set)
    for kind in KINDS:
        builtins = [c for c in plugin_set[kind] if c.package == "rqa"]
        assert builtins, kind
        for component in builtins:
            assert component.kind == kind
            assert component.version == rqa.__version__
            assert component.description, f"{kind} '{component.name}' has no description"


def test_list_plugins_json_shows_the_plugin_with_the_documented_schema(make_plugin, run_rqa):
    make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")

    result = run_rqa("list-plugins", "--json")

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"components", "plugins"}
    component_keys = {"kind", "name", "plugin", "package", "version", "description"}
    assert all(set(c) == component_keys for c in data["components"])
    assert all(set(p) == {"name", "package", "version", "ok", "disabled", "error"} for p in data["plugins"])
    assert {
        "kind": "formatters",
        "name": "fake-fmt",
        "plugin": "fake",
        "package": "rqa-fake-plugin",
        "version": "0.1",
        "description": "Wraps every question in brackets (fake formatter for tests).",
    } in data["components"]
    fake = {"name": "fake", "package": "rqa-fake-plugin", "version": "0.1", "ok": True, "disabled": False}
    assert {**fake, "error": None} in data["plugins"]
    for kind in KINDS:
        builtins = [c for c in data["components"] if c["kind"] == kind and c["package"] == "rqa"]
        assert builtins, f"no built-in {kind}"
        assert {c["version"] for c in builtins} == {rqa.__version__}
    builtin_plugins = {p["name"]: p for p in data["plugins"] if p["package"] == "rqa"}
    assert set(builtin_plugins) == {
        "rqa-formatters",
        "rqa-losses",
        "rqa-retrievers",
        "rqa-metrics",
        "rqa-retriever-losses",
        "rqa-generators",
        "rqa-judge",
        "rqa-passage-filters",
    }
    assert all(p["ok"] and p["error"] is None and p["version"] == rqa.__version__ for p in builtin_plugins.values())


def test_list_plugins_kind_filter(make_plugin, run_rqa):
    make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")

    result = run_rqa("list-plugins", "--json", "--kind", "formatters")

    assert result.returncode == 0, result.stderr
    components = json.loads(result.stdout)["components"]
    assert {c["kind"] for c in components} == {"formatters"}
    assert "fake-fmt" in {c["name"] for c in components}


# --- broken plugins --------------------------------------------------------------------------------------

IMPORT_ERROR_SOURCE = """
    raise RuntimeError("exploded while importing")
"""

HOOK_ERROR_SOURCE = """
    from rqa.hookspecs import hookimpl


    def make():
        return "formatter"


    @hookimpl
    def register_formatters(register):
        register("never-registered", make)
        raise ValueError("exploded inside the hook")
"""


def make_broken_and_good_plugins(make_plugin) -> None:
    make_plugin("broken-import", IMPORT_ERROR_SOURCE)
    make_plugin("broken-hook", HOOK_ERROR_SOURCE)
    make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")


def test_broken_plugins_are_reported_and_the_rest_still_work(make_plugin):
    make_broken_and_good_plugins(make_plugin)

    plugin_set = load_plugins()

    at_import = plugin(plugin_set, "broken-import")
    assert not at_import.ok
    assert "RuntimeError: exploded while importing" in at_import.error
    assert at_import.package == "rqa-fake-broken-import"
    in_hook = plugin(plugin_set, "broken-hook")
    assert not in_hook.ok
    assert "ValueError: exploded inside the hook" in in_hook.error
    # a plugin that fails half-way registers nothing
    assert "never-registered" not in plugin_set["formatters"]
    assert {p.name for p in plugin_set.failed} >= {"broken-import", "broken-hook"}
    assert "fake" not in {p.name for p in plugin_set.failed}
    assert plugin_set["formatters"].get("fake-fmt").plugin == "fake"
    assert_builtins_work(plugin_set)


def test_list_plugins_prints_failures_and_exits_zero(make_plugin, run_rqa):
    make_broken_and_good_plugins(make_plugin)

    result = run_rqa("list-plugins")

    assert result.returncode == 0, result.stderr
    assert "plugin 'broken-import' (rqa-fake-broken-import==0.1) failed to load:" in result.stdout
    assert "exploded while importing" in result.stdout
    assert "plugin 'broken-hook' (rqa-fake-broken-hook==0.1) failed to load:" in result.stdout
    assert "exploded inside the hook" in result.stdout
    assert "fake-fmt" in result.stdout
    assert "chatml" in result.stdout


def test_list_plugins_json_reports_failures(make_plugin, run_rqa):
    make_broken_and_good_plugins(make_plugin)

    result = run_rqa("list-plugins", "--json")

    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins["broken-import"]["ok"] is False
    assert "exploded while importing" in plugins["broken-import"]["error"]
    assert plugins["broken-hook"]["ok"] is False
    assert "exploded inside the hook" in plugins["broken-hook"]["error"]
    assert plugins["fake"]["ok"] is True


def test_list_plugins_strict_exits_one_when_a_plugin_failed(make_plugin, run_rqa):
    make_broken_and_good_plugins(make_plugin)

    result = run_rqa("list-plugins", "--strict")

    assert "exploded while importing" in result.stdout
    assert result.returncode == 1


def test_list_plugins_strict_exits_zero_when_all_load(make_plugin, run_rqa):
    make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")

    # only the fake plugin beside the built-ins, so whatever else is installed cannot interfere
    result = run_rqa("list-plugins", "--strict", env={"RQA_LOAD_PLUGINS": "fake"})

    assert result.returncode == 0, result.stdout + result.stderr
    assert "failed to load" not in result.stdout


# --- conflicts -------------------------------------------------------------------------------------------


def test_plugin_cannot_take_a_builtin_name(make_plugin):
    make_plugin("shadow", formatter_source("chatml", "shadow-extra"))

    plugin_set = load_plugins()

    info = plugin(plugin_set, "shadow")
    assert not info.ok
    assert "formatter 'chatml' is registered twice" in info.error
    assert "plugin 'rqa-formatters' (rqa==" in info.error
    assert "plugin 'shadow' (rqa-fake-shadow==0.1)" in info.error
    assert "Traceback" not in info.error
    assert plugin_set["formatters"].get("chatml").plugin == "rqa-formatters"
    assert "shadow-extra" not in plugin_set["formatters"]


def test_two_third_party_plugins_with_the_same_name(make_plugin):
    make_plugin("alpha", formatter_source("shared-fmt"))
    make_plugin("beta", formatter_source("shared-fmt"))

    plugin_set = load_plugins()

    # plugins load in name order after the built-ins: the first keeps the name, the second fails
    assert plugin(plugin_set, "alpha").ok
    beta = plugin(plugin_set, "beta")
    assert not beta.ok
    assert "plugin 'alpha' (rqa-fake-alpha==0.1)" in beta.error
    assert "plugin 'beta' (rqa-fake-beta==0.1)" in beta.error
    assert "RQA_LOAD_PLUGINS" in beta.error
    assert plugin_set["formatters"].get("shared-fmt").plugin == "alpha"


def test_plugin_registering_a_name_twice_itself(make_plugin):
    make_plugin("twice", formatter_source("twice-fmt", "twice-fmt"))

    info = plugin(load_plugins(), "twice")

    assert not info.ok
    assert "plugin 'twice' (rqa-fake-twice==0.1) registered formatters 'twice-fmt' twice" in info.error


def test_same_name_in_different_kinds_is_fine(make_plugin):
    make_plugin(
        "kinds",
        """
        from rqa.hookspecs import hookimpl


        def make():
            return None


        @hookimpl
        def register_formatters(register):
            register("chatml-like", make)


        @hookimpl
        def register_metrics(register):
            register("chatml-like", make, description="explicit description")
        """,
    )

    plugin_set = load_plugins()

    assert plugin(plugin_set, "kinds").ok
    assert plugin_set["formatters"].get("chatml-like").description == ""
    assert plugin_set["metrics"].get("chatml-like").description == "explicit description"


# --- invalid plugins -------------------------------------------------------------------------------------


def test_misspelt_hook_name_is_a_failure(make_plugin):
    make_plugin(
        "typo",
        """
        from rqa.hookspecs import hookimpl


        @hookimpl
        def register_formatter(register):
            register("typo-fmt", lambda: None)
        """,
    )

    plugin_set = load_plugins()

    info = plugin(plugin_set, "typo")
    assert not info.ok
    assert "PluginValidationError: unknown hook 'register_formatter'" in info.error
    assert "typo-fmt" not in plugin_set["formatters"]
    assert_builtins_work(plugin_set)


def test_hook_with_wrong_argument_name_is_a_failure(make_plugin):
    make_plugin(
        "badarg",
        """
        from rqa.hookspecs import hookimpl


        @hookimpl
        def register_losses(add):
            add("badarg-loss", lambda: None)
        """,
    )

    info = plugin(load_plugins(), "badarg")

    assert not info.ok
    assert "PluginValidationError: Plugin 'badarg' for hook 'register_losses'" in info.error
    assert "{'add'}" in info.error


def test_non_callable_factory_is_a_failure(make_plugin):
    make_plugin("notcallable", formatter_source("not-callable", factory="42"))

    plugin_set = load_plugins()

    info = plugin(plugin_set, "notcallable")
    assert not info.ok
    assert info.error == (
        "plugin 'notcallable' (rqa-fake-notcallable==0.1) registered formatter 'not-callable' with a "
        "factory that is not callable (int)"
    )
    assert "not-callable" not in plugin_set["formatters"]


@pytest.mark.parametrize("bad_name", ["Bad Name", "", "-leading-dash", "upper-Case"])
def test_invalid_component_name_is_a_failure(make_plugin, bad_name):
    make_plugin("badname", formatter_source(bad_name))

    plugin_set = load_plugins()

    info = plugin(plugin_set, "badname")
    assert not info.ok
    assert f"registered a formatter with the invalid name {bad_name!r}" in info.error
    assert "lower-case letters, digits" in info.error
    assert "Traceback" not in info.error
    assert bad_name not in plugin_set["formatters"]


def test_non_string_component_name_is_a_failure(make_plugin):
    make_plugin("intname", formatter_source(7))

    info = plugin(load_plugins(), "intname")

    assert not info.ok
    assert "invalid name 7" in info.error


# --- RQA_LOAD_PLUGINS ------------------------------------------------------------------------------------


def test_empty_allowlist_loads_only_builtins(make_plugin, monkeypatch):
    make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")
    monkeypatch.setenv("RQA_LOAD_PLUGINS", "")

    plugin_set = load_plugins()

    assert {p.package for p in plugin_set.plugins} == {"rqa"}
    assert "fake-fmt" not in plugin_set["formatters"]
    assert_builtins_work(plugin_set)


def test_allowlist_names_the_plugins_to_load(make_plugin, monkeypatch):
    make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")
    make_plugin("other", formatter_source("other-fmt"))
    monkeypatch.setenv("RQA_LOAD_PLUGINS", "fake")

    plugin_set = load_plugins()

    assert {p.name for p in plugin_set.plugins if not p.builtin} == {"fake"}
    assert plugin_set["formatters"].get("fake-fmt").plugin == "fake"
    assert "other-fmt" not in plugin_set["formatters"]
    assert_builtins_work(plugin_set)


def test_allowlist_accepts_a_comma_separated_list(make_plugin, monkeypatch):
    make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")
    make_plugin("other", formatter_source("other-fmt"))
    monkeypatch.setenv("RQA_LOAD_PLUGINS", " other , fake ,")

    plugin_set = load_plugins()

    assert {p.name for p in plugin_set.plugins if not p.builtin} == {"fake", "other"}


def test_allowlist_skips_a_conflicting_plugin(make_plugin, monkeypatch):
    make_plugin("shadow", formatter_source("chatml"))
    make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")
    monkeypatch.setenv("RQA_LOAD_PLUGINS", "fake")

    plugin_set = load_plugins()

    assert plugin_set.failed == []
    assert "shadow" not in {p.name for p in plugin_set.plugins}


def test_allowlist_in_the_cli(make_plugin, run_rqa):
    make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")

    without = json.loads(run_rqa("list-plugins", "--json", env={"RQA_LOAD_PLUGINS": ""}).stdout)
    with_fake = json.loads(run_rqa("list-plugins", "--json", env={"RQA_LOAD_PLUGINS": "fake"}).stdout)

    assert {p["package"] for p in without["plugins"]} == {"rqa"}
    assert "fake-fmt" not in {c["name"] for c in without["components"]}
    assert {p["name"] for p in with_fake["plugins"] if p["package"] != "rqa"} == {"fake"}
    assert "fake-fmt" in {c["name"] for c in with_fake["components"]}


# --- a failed plugin is named where a name goes missing ---------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "example"
MISSING_DEPENDENCY_SOURCE = """
    import rqa_missing_dependency_for_tests  # not installed: the plugin fails at import
    from rqa.hookspecs import hookimpl


    @hookimpl
    def register_losses(register):
        register("fancy-ce", rqa_missing_dependency_for_tests.FancyCE)
"""
MISSING_DEPENDENCY_ERROR = "ModuleNotFoundError: No module named 'rqa_missing_dependency_for_tests'"
BROKEN_LOSS = "plugin 'broken-loss' (rqa-fake-broken-loss==0.1)"
BROKEN_IMPORT = "plugin 'broken-import' (rqa-fake-broken-import==0.1)"


def warnings_of(plugin: str, output: str) -> int:
    """How many warning lines ``output`` holds about ``plugin`` (rich may wrap a long line: spaces are joined)."""
    return " ".join(output.split()).count(f"{plugin} failed to load:")


def dry_run(run_rqa, tmp_path: Path, *flags: str):
    return run_rqa(
        "train",
        "--train_file", str(EXAMPLE / "train_w_qa.jsonl"),
        "--output_dir", str(tmp_path / "run"),
        "--dry_run", "true",
        *flags,
    )  # fmt: skip


def test_failed_plugin_keeps_a_one_line_error(make_plugin):
    make_plugin("broken-loss", MISSING_DEPENDENCY_SOURCE)
    make_plugin("broken-import", IMPORT_ERROR_SOURCE)

    plugin_set = load_plugins()

    broken = plugin(plugin_set, "broken-loss")
    assert broken.summary == MISSING_DEPENDENCY_ERROR
    assert broken.provider == BROKEN_LOSS
    assert "Traceback" in broken.error  # the whole traceback stays for list-plugins
    assert plugin(plugin_set, "broken-import").summary == "RuntimeError: exploded while importing"
    assert plugin(plugin_set, "rqa-losses").summary is None


def test_unknown_name_names_every_plugin_that_failed_to_load(make_plugin):
    make_plugin("broken-loss", MISSING_DEPENDENCY_SOURCE)
    make_plugin("broken-import", IMPORT_ERROR_SOURCE)

    with pytest.raises(UnknownComponentError) as caught:
        load_plugins()["losses"].get("fancy-ce")

    message = str(caught.value)
    assert message.startswith("unknown loss 'fancy-ce'.")
    assert "Available: answer-ce," in message
    assert "It may come from one of the plugins that failed to load:" in message
    assert f"{BROKEN_LOSS}: {MISSING_DEPENDENCY_ERROR}" in message
    assert f"{BROKEN_IMPORT}: RuntimeError: exploded while importing" in message
    assert "rqa list-plugins shows the full errors" in message
    assert "\n" not in message and "Traceback" not in message


def test_unknown_name_says_nothing_of_plugins_when_all_loaded(make_plugin):
    make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")

    with pytest.raises(UnknownComponentError) as caught:
        load_plugins()["losses"].get("fancy-ce")

    assert "failed to load" not in str(caught.value)


def test_train_with_a_name_from_a_broken_plugin_names_the_plugin(make_plugin, run_rqa, tmp_path):
    make_plugin("broken-loss", MISSING_DEPENDENCY_SOURCE)

    result = dry_run(run_rqa, tmp_path, "--loss", "fancy-ce")

    assert result.returncode == 1, result.stdout + result.stderr
    error = " ".join(result.stderr.split())
    assert "unknown loss 'fancy-ce'" in error
    assert f"It may come from a plugin that failed to load: {BROKEN_LOSS}: {MISSING_DEPENDENCY_ERROR}" in error
    assert "rqa list-plugins shows the full error" in error
    assert "Traceback" not in result.stderr
    assert warnings_of(BROKEN_LOSS, result.stdout) == 1


def test_train_dry_run_warns_once_per_failed_plugin(make_plugin, run_rqa, tmp_path):
    make_plugin("broken-loss", MISSING_DEPENDENCY_SOURCE)
    make_plugin("broken-import", IMPORT_ERROR_SOURCE)
    make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")

    result = dry_run(run_rqa, tmp_path, "--loss", "label-smoothed-ce:smoothing=0.1")

    assert result.returncode == 0, result.stdout + result.stderr
    output = " ".join(result.stdout.split())
    assert "configuration OK" in output
    assert f"{BROKEN_LOSS} failed to load: {MISSING_DEPENDENCY_ERROR}; see rqa list-plugins" in output
    assert f"{BROKEN_IMPORT} failed to load: RuntimeError: exploded while importing; see rqa list-plugins" in output
    assert warnings_of(BROKEN_LOSS, result.stdout) == 1
    assert warnings_of(BROKEN_IMPORT, result.stdout) == 1
    assert "plugin 'fake'" not in output


def test_render_warns_once_per_failed_plugin(make_plugin, run_rqa):
    make_plugin("broken-loss", MISSING_DEPENDENCY_SOURCE)
    make_plugin("broken-import", IMPORT_ERROR_SOURCE)

    result = run_rqa("render", "--train_file", str(EXAMPLE / "train_w_qa.jsonl"), "--formatter", "chatml")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "tokens per part" in result.stdout
    output = " ".join(result.stdout.split())
    assert f"{BROKEN_LOSS} failed to load: {MISSING_DEPENDENCY_ERROR}; see rqa list-plugins" in output
    assert warnings_of(BROKEN_LOSS, result.stdout) == 1
    assert warnings_of(BROKEN_IMPORT, result.stdout) == 1


def test_evaluate_warns_and_names_the_plugin_for_an_unknown_retriever(make_plugin, run_rqa, tmp_path):
    make_plugin("broken-import", IMPORT_ERROR_SOURCE)

    result = run_rqa(
        "evaluate",
        "--data", str(EXAMPLE / "eval_w_qa.jsonl"),
        "--retriever", "fancy-retriever",
        "--retrieval_only",
        "--output_dir", str(tmp_path / "eval"),
    )  # fmt: skip

    assert result.returncode == 1, result.stdout + result.stderr
    error = " ".join(result.stderr.split())
    assert "unknown retriever 'fancy-retriever'" in error
    assert f"{BROKEN_IMPORT}: RuntimeError: exploded while importing" in error
    assert warnings_of(BROKEN_IMPORT, result.stdout) == 1
    assert not (tmp_path / "eval").exists()


def test_list_plugins_shows_failures_without_the_extra_warning(make_plugin, run_rqa):
    make_plugin("broken-import", IMPORT_ERROR_SOURCE)

    result = run_rqa("list-plugins")

    assert result.returncode == 0, result.stderr
    assert f"{BROKEN_IMPORT} failed to load:" in result.stdout
    assert "see rqa list-plugins" not in result.stdout + result.stderr


# --- one plugin manager, RQA_DISABLE_PLUGINS, tracing ------------------------------------------------------


def test_every_loaded_plugin_is_registered_in_one_manager_under_its_name(make_plugin):
    fake = make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")
    make_plugin("broken-hook", HOOK_ERROR_SOURCE)

    plugin_set = load_plugins()

    manager = plugin_set.manager
    assert manager.get_plugin("fake").__name__ == fake.module
    assert {"rqa-formatters", "rqa-losses", "rqa-retrievers", "rqa-metrics", "fake"} <= set(
        dict(manager.list_name_plugin())
    )
    assert not manager.has_plugin("broken-hook")  # a plugin that failed is dropped from the manager too


def test_disabled_plugin_is_listed_but_never_imported(make_plugin, monkeypatch):
    make_plugin("broken-import", IMPORT_ERROR_SOURCE)
    make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")
    monkeypatch.setenv("RQA_DISABLE_PLUGINS", "broken-import, fake")

    plugin_set = load_plugins()

    for name in ("broken-import", "fake"):
        info = plugin(plugin_set, name)
        assert (info.ok, info.disabled, info.error) == (True, True, None)
        assert plugin_set.manager.is_blocked(name)
    assert plugin_set.failed == []
    assert "fake-fmt" not in plugin_set["formatters"]
    assert_builtins_work(plugin_set)


def test_builtins_cannot_be_disabled(monkeypatch):
    monkeypatch.setenv("RQA_DISABLE_PLUGINS", "rqa-formatters")

    plugin_set = load_plugins()

    assert not plugin(plugin_set, "rqa-formatters").disabled
    assert_builtins_work(plugin_set)


def test_list_plugins_shows_disabled_plugins(make_plugin, run_rqa):
    make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")

    text = run_rqa("list-plugins", env={"RQA_DISABLE_PLUGINS": "fake"})
    data = json.loads(run_rqa("list-plugins", "--json", env={"RQA_DISABLE_PLUGINS": "fake"}).stdout)

    assert text.returncode == 0, text.stderr
    assert "plugin 'fake' (rqa-fake-plugin==0.1) is disabled (RQA_DISABLE_PLUGINS)" in " ".join(text.stdout.split())
    assert "fake-fmt" not in text.stdout
    fake = {p["name"]: p for p in data["plugins"]}["fake"]
    assert (fake["ok"], fake["disabled"], fake["error"]) == (True, True, None)


@pytest.mark.parametrize(("flags", "env"), [(("--debug",), {}), ((), {"RQA_DEBUG_PLUGINS": "1"})])
def test_plugin_hook_calls_are_traced_on_request(make_plugin, run_rqa, flags, env):
    make_plugin("fake", GOOD_SOURCE, package="rqa-fake-plugin")

    result = run_rqa("list-plugins", "--json", *flags, env=env)

    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)  # tracing goes to stderr only
    assert "loading plugin 'fake' (rqa-fake-plugin==0.1)" in result.stderr
    assert "register_formatters [hook]" in result.stderr
    assert "register_losses [hook]" in result.stderr


def test_no_tracing_by_default(run_rqa):
    result = run_rqa("list-plugins", "--json", env={"RQA_LOAD_PLUGINS": ""})

    assert result.returncode == 0
    assert "[hook]" not in result.stderr


def test_hookimpl_is_exported_from_the_package():
    from rqa import hookimpl
    from rqa.hookspecs import hookimpl as from_hookspecs

    assert hookimpl is from_hookspecs
