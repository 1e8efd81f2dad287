"""Built-in passage filters for ``rqa generate --filter``: passages not worth asking questions about.

Each factory's docstring says what its filter removes (``generation.json`` shows it beside the count).
``boilerplate`` declares ``documents``: it must see the whole database once to know which lines recur.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from rqa.contracts import PassageFilter
from rqa.hookspecs import hookimpl
from rqa.schema import Document

SHORT_WORDS = 12  # fewer words than this: a heading, a link list or a stub, not something to ask about
BOILERPLATE_SHARE = 0.5  # a passage most of whose lines recur in other passages is navigation or a footer
BOILERPLATE_REPEATS = 3


def short(min_words: int = SHORT_WORDS) -> PassageFilter:
    """Removes passages under min_words words (12 by default): headings, link lists, stubs."""
    if min_words < 1:
        raise ValueError(f"min_words must be at least 1, got {min_words}")

    def keep(document: Document) -> bool:
        return len(document.page_content.split()) >= min_words

    return keep


def boilerplate(
    documents: Sequence[Document], max_share: float = BOILERPLATE_SHARE, min_repeats: int = BOILERPLATE_REPEATS
) -> PassageFilter:
    """Removes passages most of whose lines recur in others: navigation, footers (options: max_share, min_repeats).

    A line recurs when ``min_repeats`` or more passages hold it (case and spacing ignored); a passage goes when
    more than ``max_share`` of its lines recur.
    """
    if not 0 <= max_share <= 1:
        raise ValueError(f"max_share must be in [0, 1], got {max_share}")
    if min_repeats < 2:
        raise ValueError(f"min_repeats must be at least 2, got {min_repeats}")
    counts = Counter(line for d in documents for line in {_line_key(x) for x in d.page_content.splitlines()} if line)

    def keep(document: Document) -> bool:
        lines = [key for key in (_line_key(x) for x in document.page_content.splitlines()) if key]
        repeated = sum(counts[key] >= min_repeats for key in lines)
        return not lines or repeated / len(lines) <= max_share

    return keep


def _line_key(line: str) -> str:
    return " ".join(line.lower().split())


@hookimpl
def register_passage_filters(register) -> None:
    register("short", short)
    register("boilerplate", boilerplate)
