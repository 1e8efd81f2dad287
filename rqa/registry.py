"""Named component registries with helpful errors for unknown names, duplicates and bad options."""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from rqa import contracts
from rqa.errors import (
    ComponentBuildError,
    ComponentOptionError,
    DuplicateComponentError,
    InvalidComponentError,
    RqaError,
    UnknownComponentError,
)

KINDS = ("formatters", "losses", "retrievers", "metrics", "retriever_losses", "generators", "passage_filters")
SINGULAR = {
    "formatters": "formatter",
    "losses": "loss",
    "retrievers": "retriever",
    "metrics": "metric",
    "retriever_losses": "retriever loss",
    "generators": "generator",
    "passage_filters": "passage filter",
}
_VALID_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class Component:
    """One registry entry: a factory plus who provided it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    package: str | None
    version: str | None
    description: str

    @property
    def provider(self) -> str:
        package = f"{self.package}=={self.version}" if self.package else "unknown package"
        return f"plugin '{self.plugin}' ({package})"


def describe(factory: Callable[..., Any]) -> str:
    """First line of the factory's docstring: the one-line description shown by ``list-plugins``."""
    doc = inspect.getdoc(getattr(factory, "func", factory) if isinstance(factory, partial) else factory) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """Components of one kind, by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._components: dict[str, Component] = {}
        # one line per plugin that failed to load ("plugin 'x' (pkg==1.0): Error: message"): a plugin that
        # failed registered nothing, so a name the user expects from it reads as unknown here
        self.load_failures: list[str] = []

    def __contains__(self, name: object) -> bool:
        return name in self._components

    def __iter__(self) -> Iterator[Component]:
        return iter(sorted(self._components.values(), key=lambda c: c.name))

    def __len__(self) -> int:
        return len(self._components)

    def names(self) -> list[str]:
        return sorted(self._components)

    def check(self, component: Component) -> None:
        """Raise if ``component`` cannot join this registry; nothing is changed."""
        noun = SINGULAR.get(self.kind, self.kind)
        if not isinstance(component.name, str) or not _VALID_NAME.match(component.name):
            raise InvalidComponentError(
                f"{component.provider} registered a {noun} with the invalid name {component.name!r}: "
                "use lower-case letters, digits, '.', '_' and '-'"
            )
        if not callable(component.factory):
            raise InvalidComponentError(
                f"{component.provider} registered {noun} '{component.name}' with a factory that is not "
                f"callable ({type(component.factory).__name__})"
            )
        existing = self._components.get(component.name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{noun} '{component.name}' is registered twice: by {existing.provider} and by "
                f"{component.provider}; uninstall one, or restrict plugins with RQA_LOAD_PLUGINS"
            )

    def add(self, component: Component) -> None:
        self.check(component)
        self._components[component.name] = component

    def get(self, name: str) -> Component:
        try:
            return self._components[name]
        except KeyError:
            raise UnknownComponentError(self.unknown_message(name)) from None

    def unknown_message(self, name: str, also: Sequence[str] = ()) -> str:
        """Why ``name`` is refused: the closest match and every valid name (``also``: ones a command accepts
        besides this registry's, such as ``rqa generate --filter roundtrip``), and plugins that failed to load."""
        noun = SINGULAR.get(self.kind, self.kind)
        names = [*self.names(), *also]
        message = f"unknown {noun} '{name}'."
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        if close:
            message += f" Did you mean '{close[0]}'?"
        message += f" Available: {', '.join(names) if names else '(none installed)'}"
        if self.load_failures:
            which = "a plugin" if len(self.load_failures) == 1 else "one of the plugins"
            errors = "error" if len(self.load_failures) == 1 else "errors"
            message += (
                f". It may come from {which} that failed to load: {'; '.join(self.load_failures)} "
                f"(rqa list-plugins shows the full {errors})"
            )
        return message

    def accepted(self, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """The ``options`` component ``name``'s factory takes, others dropped: defaults a command offers to
        whichever component was chosen (``embed_urls`` to a dense retriever, not to BM25)."""
        parameters = inspect.signature(self.get(name).factory).parameters
        return {key: value for key, value in options.items() if key in parameters}

    def create(self, name: str, options: Mapping[str, Any] | None = None, **context: Any) -> Any:
        """Build component ``name`` from user ``options`` plus runtime ``context`` it asks for by name."""
        component = self.get(name)
        kwargs = validate_options(component, options or {}, context=set(context))
        parameters = inspect.signature(component.factory).parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        kwargs.update({k: v for k, v in context.items() if k in parameters or accepts_any})
        noun = SINGULAR.get(self.kind, self.kind)
        try:
            built = component.factory(**kwargs)
        except ValueError as error:  # factories reject bad option values with ValueError
            raise ComponentOptionError(f"{noun} '{name}': {error}") from error
        except RqaError:
            raise
        except Exception as error:
            raise ComponentBuildError(
                f"{noun} '{name}' from {component.provider} failed to build: {type(error).__name__}: {error}"
            ) from error
        return built

    def build(self, name: str, options: Mapping[str, Any] | None = None, **context: Any) -> Any:
        """``create``, then check the result against its kind's contract (``rqa.contracts``)."""
        built = self.create(name, options, **context)
        problems = contracts.missing(self.kind, built)
        if problems:
            raise InvalidComponentError(contract_message(self.get(name), f"built a {type(built).__name__}", problems))
        return built


def contract_message(component: Component, what: str, problems: list[str]) -> str:
    """Who built what, and what it lacks: enough for the user to tell the plugin's author."""
    noun = SINGULAR.get(component.kind, component.kind)
    protocol = contracts.CONTRACTS[component.kind].__name__
    return (
        f"{noun} '{component.name}' from {component.provider} {what} without {', '.join(problems)}: not a valid "
        f"{noun} (rqa.contracts.{protocol} lists what a {noun} needs)"
    )


def check_factory_contract(component: Component) -> None:
    """Check what can be known without building: the methods of the class the factory makes.

    Formatters need a tokenizer to build, so ``--dry_run`` cannot build them; this still catches one whose
    class lacks ``render``. ``Registry.build`` checks everything once the component exists.
    """
    problems = contracts.missing_statically(component.kind, component.factory)
    if problems:
        raise InvalidComponentError(contract_message(component, "builds a class", problems))


def _option_parameters(component: Component, context: set[str]) -> dict[str, inspect.Parameter]:
    parameters = inspect.signature(component.factory).parameters
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {name: p for name, p in parameters.items() if name not in context and p.kind not in variadic}


def validate_options(
    component: Component, options: Mapping[str, Any], context: set[str] | frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Check ``options`` against the factory's signature; return them converted to the annotated types.

    Every problem is reported at once, before anything heavy is built; a factory whose class visibly breaks
    its kind's contract fails first (``check_factory_contract``). Callers keep the returned values, not
    the command-line strings, so what a run records (``rqa_args.json``) holds numbers and booleans as such;
    converting a converted value again changes nothing.
    """
    check_factory_contract(component)
    accepted = _option_parameters(component, set(context))
    hints = _annotations(component.factory)
    noun = SINGULAR.get(component.kind, component.kind)
    problems: list[str] = []
    converted: dict[str, Any] = {}
    for key, value in options.items():
        if key not in accepted:
            valid = ", ".join(accepted) or "none"
            problems.append(f"unknown option '{key}' (accepted: {valid})")
            continue
        try:
            converted[key] = _convert(value, hints.get(key, accepted[key].annotation))
        except (TypeError, ValueError) as error:
            problems.append(f"option '{key}': {error}")
    missing = [n for n, p in accepted.items() if p.default is inspect.Parameter.empty and n not in options]
    problems += [f"missing required option '{n}'" for n in missing]
    if problems:
        raise ComponentOptionError(f"{noun} '{component.name}': " + "; ".join(problems))
    return converted


def _annotations(factory: Callable[..., Any]) -> dict[str, Any]:
    """Parameter types (string annotations resolved), one by one so one bad hint hides no others."""
    try:
        parameters = inspect.signature(factory, eval_str=True).parameters
        return {name: p.annotation for name, p in parameters.items() if p.annotation is not p.empty}
    except Exception:
        pass
    target = factory.__init__ if inspect.isclass(factory) else getattr(factory, "func", factory)
    namespace = getattr(target, "__globals__", {})
    resolved: dict[str, Any] = {}
    for name, parameter in inspect.signature(factory).parameters.items():
        annotation = parameter.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace, {})  # a type expression, as typing itself does
            except Exception:
                continue
        resolved[name] = annotation
    return resolved


def _convert(value: Any, annotation: Any) -> Any:
    """Convert a command-line string to a simple annotated type (bool, int, float, str, list)."""
    if not isinstance(value, str):
        return value
    target = annotation
    args = getattr(annotation, "__args__", None)
    if args and type(None) in args:  # Optional[X] / X | None
        if value.lower() in ("none", "null"):
            return None
        members = [a for a in args if a is not type(None)]
        return _convert(value, members[0] if len(members) == 1 else str)
    if getattr(annotation, "__origin__", None) in (list, tuple):
        item = args[0] if args else str
        return [_convert(v.strip(), item) for v in value.split(";") if v.strip()]
    if target is bool:
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if target in (int, float):
        try:
            return target(value)
        except ValueError:
            raise ValueError(f"expected {target.__name__}, got {value!r}") from None
    return value


def parse_component_spec(spec: str, option_pairs: list[str] | None = None) -> tuple[str, dict[str, str]]:
    """``name`` or ``name:key=value,key=value`` plus ``key=value`` pairs → (name, options)."""
    name, _, inline = spec.partition(":")
    pairs = [p for p in inline.split(",") if p.strip()] + list(option_pairs or [])
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ComponentOptionError(f"option {pair!r} for '{name}' must look like key=value")
        options[key.strip()] = value
    return name.strip(), options
