"""Error types whose messages are shown to users as they are.

None of them subclasses ``KeyError``: its ``str()`` wraps the message in quotes.
"""

from __future__ import annotations


class RqaError(Exception):
    """A problem the user can fix; the CLI prints its message without a traceback."""


class DataError(RqaError):
    """A broken record in an input file, located by file, line and field."""

    def __init__(self, path: str, line: int | None, message: str, field: str | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {what}")
        self.path, self.line, self.field = path, line, field


class UnknownComponentError(RqaError):
    """A component name that no installed plugin registered."""


class DuplicateComponentError(RqaError):
    """Two plugins registered the same name for the same kind of component."""


class ComponentOptionError(RqaError):
    """Options given to a component that its factory does not accept or cannot convert."""


class InvalidComponentError(RqaError):
    """A plugin tried to register something that cannot be a component."""


class ComponentBuildError(RqaError):
    """A plugin's factory raised while building its component."""
