"""Plugin discovery: entry points in the ``rqa`` group, loaded one at a time into one pluggy manager.

rqa's own built-ins are entry points of the ``rqa`` distribution, so they travel the same path as
third-party plugins. A plugin that fails to import, or raises in its hook, is kept with its error (shown by
``rqa list-plugins``) and registers nothing; the others still work. Because a name it would have registered
then reads as unknown, commands warn about it once (``get_plugins``) and unknown-name errors name it.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from rqa import hookspecs
from rqa.errors import RqaError
from rqa.registry import KINDS, Component, Registry, describe

ENTRY_POINT_GROUP = "rqa"
BUILTIN_PACKAGE = "rqa"
ENV_ALLOWLIST = "RQA_LOAD_PLUGINS"
ENV_DISABLE = "RQA_DISABLE_PLUGINS"
ENV_DEBUG = "RQA_DEBUG_PLUGINS"
SUMMARY_CHARS = 200  # a one-line error longer than this is cut: the full one is in ``rqa list-plugins``

log = logging.getLogger("rqa")


@dataclass
class PluginInfo:
    """What ``list-plugins`` shows about one plugin."""

    name: str
    package: str | None
    version: str | None
    ok: bool = True
    disabled: bool = False  # blocked with RQA_DISABLE_PLUGINS: listed, never imported
    error: str | None = None
    summary: str | None = None  # the error in one line, for warnings and unknown-name errors

    @property
    def builtin(self) -> bool:
        return self.package == BUILTIN_PACKAGE

    @property
    def provider(self) -> str:
        package = f"{self.package}=={self.version}" if self.package else "unknown package"
        return f"plugin '{self.name}' ({package})"


@dataclass
class PluginSet:
    """One registry per kind, the plugins that filled them, and the plugin manager they are registered with."""

    registries: dict[str, Registry] = field(default_factory=lambda: {k: Registry(k) for k in KINDS})
    plugins: list[PluginInfo] = field(default_factory=list)
    manager: pluggy.PluginManager | None = None  # holds every plugin that loaded, under its plugin name

    def __getitem__(self, kind: str) -> Registry:
        return self.registries[kind]

    @property
    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins if not p.ok]

    def mark_failed(self, info: PluginInfo, error: BaseException) -> None:
        """Keep ``info``'s error, and tell every registry: an unknown name may have been this plugin's."""
        info.ok, info.error, info.summary = False, _format_error(error), _one_line(error)
        for registry in self.registries.values():
            registry.load_failures.append(f"{info.provider}: {info.summary}")


def _allowed(entry_point: EntryPoint) -> bool:
    """Built-ins always load; ``RQA_LOAD_PLUGINS=a,b`` limits third-party plugins (empty: none)."""
    allow = os.environ.get(ENV_ALLOWLIST)
    if allow is None or _package(entry_point)[0] == BUILTIN_PACKAGE:
        return True
    return entry_point.name in {name.strip() for name in allow.split(",") if name.strip()}


def _package(entry_point: EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _format_error(error: BaseException) -> str:
    if isinstance(error, RqaError):
        return str(error)
    return "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()


def _one_line(error: BaseException) -> str:
    """The exception's type and message on one line, as the last line of its traceback shows them."""
    message = " ".join(str(error).split())
    if not isinstance(error, RqaError):
        message = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return message if len(message) <= SUMMARY_CHARS else message[: SUMMARY_CHARS - 1] + "…"


def _make_plugin_manager(debug: bool | None = None) -> pluggy.PluginManager:
    """The one manager all plugins register with; ``debug`` (or ``RQA_DEBUG_PLUGINS=1``) traces hook calls."""
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    if debug if debug is not None else os.environ.get(ENV_DEBUG, "") not in ("", "0"):
        manager.trace.root.setwriter(lambda message: sys.stderr.write(f"[rqa plugins] {message}"))
        manager.enable_tracing()
    return manager


def _disabled_names() -> set[str]:
    return {name.strip() for name in os.environ.get(ENV_DISABLE, "").split(",") if name.strip()}


def _run_hooks(manager: pluggy.PluginManager, module: Any, info: PluginInfo, plugin_set: PluginSet) -> list[Component]:
    """Register ``module`` and call each of its hooks through pluggy with a ``register`` bound to this plugin.

    Only this plugin's implementations run (``subset_hook_caller``), so every component knows who provided it
    and a plugin that raises half-way can be dropped whole. The caller unregisters it on failure.
    """
    manager.trace(f"loading {info.provider}")
    manager.register(module, name=info.name)
    manager.check_pending()  # a misspelt hook name is an error, not a silent no-op
    others = [p for p in manager.get_plugins() if p is not module]
    implemented = {caller.name for caller in manager.get_hookcallers(module) or ()}
    staged: list[Component] = []
    for kind in KINDS:
        if f"register_{kind}" not in implemented:
            continue
        registry = plugin_set[kind]

        def register(
            name: str,
            factory: Callable[..., Any],
            description: str | None = None,
            _kind: str = kind,
            _registry: Registry = registry,
        ) -> None:
            component = Component(
                kind=_kind,
                name=name,
                factory=factory,
                plugin=info.name,
                package=info.package,
                version=info.version,
                description=description if description is not None else describe(factory),
            )
            _registry.check(component)
            if any(c.kind == _kind and c.name == name for c in staged):
                raise RqaError(f"{component.provider} registered {_kind} '{name}' twice")
            staged.append(component)

        manager.subset_hook_caller(f"register_{kind}", remove_plugins=others)(register=register)
    return staged


def load_plugins(debug: bool | None = None) -> PluginSet:
    """Discover and load every allowed plugin into one plugin manager; never raises because of a broken plugin.

    Built-ins load first, then third-party plugins in name order. ``RQA_LOAD_PLUGINS`` leaves plugins out
    entirely; ``RQA_DISABLE_PLUGINS`` blocks them in the manager (pluggy's ``set_blocked``): they are not
    imported, and ``list-plugins`` shows them as disabled. Built-ins cannot be disabled: nothing runs without
    them, and a plugin cannot shadow them anyway.
    """
    manager = _make_plugin_manager(debug)
    plugin_set = PluginSet(manager=manager)
    found = sorted(
        entry_points(group=ENTRY_POINT_GROUP),
        key=lambda ep: (_package(ep)[0] != BUILTIN_PACKAGE, ep.name),
    )
    disabled = _disabled_names()
    for entry_point in found:
        if not _allowed(entry_point):
            continue
        package, version = _package(entry_point)
        info = PluginInfo(name=entry_point.name, package=package, version=version)
        plugin_set.plugins.append(info)
        if entry_point.name in disabled and not info.builtin:
            manager.set_blocked(info.name)
        if manager.is_blocked(info.name):
            info.disabled = True
            continue
        try:
            module = entry_point.load()
            staged = _run_hooks(manager, module, info, plugin_set)
        except (Exception, SystemExit) as error:  # a broken plugin must never take the CLI down
            if manager.has_plugin(info.name):
                manager.unregister(name=info.name)
            plugin_set.mark_failed(info, error)
            continue
        for component in staged:
            plugin_set[component.kind].add(component)
    return plugin_set


@lru_cache(maxsize=1)
def get_plugins() -> PluginSet:
    """The process-wide plugin set, loaded on first use.

    Each plugin that failed to load is warned about here, once: every command that picks components by name
    (``train``, ``evaluate``, ``render``, ``index``, ``ask``, ``chat``) comes through, and a broken plugin is otherwise
    only visible as a name that has gone missing.
    """
    plugin_set = load_plugins()
    warn_about_failed_plugins(plugin_set)
    return plugin_set


def warn_about_failed_plugins(plugin_set: PluginSet) -> None:
    """One warning line per plugin that failed to load: who it is, its error in one line, where to look."""
    for plugin in plugin_set.failed:
        log.warning("%s failed to load: %s; see rqa list-plugins", plugin.provider, plugin.summary)
