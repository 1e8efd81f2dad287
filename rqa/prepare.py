"""Raw articles → a chunked document database in rqa's document shape.

Articles come from a JSONL file (``text``, ``title``, ``source``) or a folder of ``.md``/``.txt``/``.html``
files. Chunks are measured in the generator's tokens, because the prompt budget is in tokens: paragraphs are
packed greedily up to ``chunk_size``; a paragraph too long is split into lines and sentences, and a sentence
too long is cut by tokens. Consecutive chunks of an article share about ``chunk_overlap`` tokens, carried as
whole sentences where they fit, so an answer that straddles a boundary is still whole in one chunk.

Everything happens in token space over one tokenization of each article (with character offsets), so the
chunk text is always an exact slice of the article.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from rqa.errors import DataError, RqaError
from rqa.schema import Document, iter_jsonl

log = logging.getLogger("rqa")
FOLDER_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm")
# Boundaries from coarse to fine: blank line (paragraph), line break, end of sentence, and space between words
# (so a sentence longer than a chunk is cut between words, by tokens). Each marks where the next unit starts;
# the separating whitespace stays with the unit before it.
_BOUNDARIES = (
    re.compile(r"\n[ \t]*\n\s*"),
    re.compile(r"\n\s*"),
    re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+"),
    re.compile(r"\s+"),
)
_SENTENCE_LEVELS = 3  # the first three: where an overlap should start when it can
_MARKDOWN_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Article:
    """One raw document before chunking; ``extra`` holds any other fields of its JSONL record."""

    text: str
    title: str
    source: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PrepareResult:
    documents: list[Document]
    token_lengths: list[int]  # of each chunk's text, alone
    articles: int = 0
    empty_articles: int = 0
    duplicates: int = 0


def format_chunk(source: str, title: str, chunk: str) -> str:
    """LocalRQA's document layout: what the embedder and the generator read."""
    return f"Source: {source}\nTitle: {title}\nContent:\n{chunk}"


# ---------------------------------------------------------------------------------------------- reading


def read_articles_jsonl(path: str | Path) -> list[Article]:
    """Articles from a JSONL file; a broken line raises a ``DataError`` naming the file, line and field."""
    path = str(path)
    articles: list[Article] = []
    for number, record in iter_jsonl(path):
        where = (path, number)
        if not isinstance(record, dict):
            raise DataError(*where, f"an article must be a JSON object, got {type(record).__name__}")
        if "text" not in record:
            hint = " (this line is already a chunked document: page_content)" if "page_content" in record else ""
            raise DataError(*where, f"is missing{hint}", field="text")
        for key in ("text", "title", "source"):
            if key in record and record[key] is not None and not isinstance(record[key], str):
                raise DataError(*where, f"must be a string, got {type(record[key]).__name__}", field=key)
        extra = {k: v for k, v in record.items() if k not in ("text", "title", "source")}
        articles.append(
            Article(
                text=record["text"] or "",
                title=record.get("title") or "",
                source=record.get("source") or f"{Path(path).name}:{number}",
                extra=extra,
            )
        )
    if not articles:
        raise DataError(path, None, "holds no articles")
    return articles


def read_articles_folder(folder: str | Path) -> list[Article]:
    """Every ``.md``/``.txt``/``.html`` file under ``folder``; the source is the path relative to it."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES)
    if not files:
        raise RqaError(f"{root}: no {', '.join(FOLDER_SUFFIXES)} files found")
    articles = []
    for path in files:
        try:
            raw = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(str(path), None, f"is not valid UTF-8 (byte {error.start})") from None
        except OSError as error:
            raise DataError(str(path), None, f"cannot be read: {error.strerror}") from None
        source = path.relative_to(root).as_posix()
        if path.suffix.lower() in (".html", ".htm"):
            text, title = html_to_text(raw)
        else:
            text = raw
            heading = _MARKDOWN_HEADING.search(raw) if path.suffix.lower() in (".md", ".markdown") else None
            title = heading.group(1) if heading else ""
        articles.append(Article(text=text, title=title or path.stem, source=source))
    return articles


def read_articles(path: str | Path) -> list[Article]:
    if Path(path).is_dir():
        return read_articles_folder(path)
    return read_articles_jsonl(path)


class _HtmlText(HTMLParser):
    """Visible text of a page, with block elements as paragraphs; the title and first heading kept apart."""

    HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
    BLOCKS = HEADINGS | frozenset(
        {"p", "br", "hr", "pre", "blockquote", "li", "ul", "ol", "dl", "dt", "dd", "address", "figcaption"}
        | {"div", "section", "article", "header", "footer", "nav", "main", "aside", "figure", "form"}
        | {"table", "thead", "tbody", "tr", "td", "th"}
    )
    HIDDEN = frozenset({"script", "style", "noscript", "template", "head"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self.current: list[str] = []
        self.hidden = 0
        self.in_title = self.in_heading = self.in_pre = False
        self.title = self.heading = ""
        self._heading_parts: list[str] = []

    def _flush(self) -> None:
        text = "".join(self.current)
        text = text.strip("\n") if self.in_pre else re.sub(r"\s+", " ", text).strip()
        if text:
            self.blocks.append(text)
        self.current = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag == "body":  # a page may leave <head> unclosed
            self.hidden = 0
        elif tag in self.HIDDEN:
            self.hidden += 1
        if tag in self.BLOCKS:
            self._flush()
        if tag == "pre":
            self.in_pre = True
        if tag in self.HEADINGS and not self.heading:
            self.in_heading, self._heading_parts = True, []
        if tag == "li":
            self.current.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        if tag in self.BLOCKS:
            self._flush()
        if tag == "pre":
            self.in_pre = False
        if tag in self.HEADINGS and self.in_heading:
            self.in_heading = False
            self.heading = re.sub(r"\s+", " ", "".join(self._heading_parts)).strip()

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title += data
            return
        if self.hidden:
            return
        if self.in_heading:
            self._heading_parts.append(data)
        self.current.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def html_to_text(html: str) -> tuple[str, str]:
    """(text, title) of an HTML page: block elements become paragraphs; title from <title>, else a heading."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    title = re.sub(r"\s+", " ", parser.title).strip() or parser.heading
    return "\n\n".join(parser.blocks), title


# --------------------------------------------------------------------------------------------- chunking


def check_sizes(chunk_size: int, chunk_overlap: int) -> None:
    """Raise before anything loads when the sizes cannot work."""
    if chunk_size < 1:
        raise RqaError(f"chunk_size must be at least 1, got {chunk_size}")
    if not 0 <= chunk_overlap < chunk_size:
        raise RqaError(f"chunk_overlap must be at least 0 and below chunk_size ({chunk_size}), got {chunk_overlap}")


class Chunker:
    """Splits text into chunks of at most ``chunk_size`` tokens, neighbours sharing ~``chunk_overlap``."""

    def __init__(self, tokenizer: Any, chunk_size: int = 400, chunk_overlap: int = 50) -> None:
        check_sizes(chunk_size, chunk_overlap)
        if not getattr(tokenizer, "is_fast", False):
            raise RqaError("chunking needs a fast tokenizer (one that reports character offsets)")
        self.tokenizer, self.chunk_size, self.chunk_overlap = tokenizer, chunk_size, chunk_overlap
        # units this small always fit after a full overlap, so every boundary can carry one
        self.unit_limit = chunk_size - chunk_overlap

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def split(self, text: str) -> list[str]:
        text = text.replace("\r\n", "\n").strip()
        if not text:
            return []
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets: list[tuple[int, int]] = [tuple(pair) for pair in encoded["offset_mapping"]]
        ends = [end for _, end in offsets]
        levels = [
            sorted({bisect.bisect_right(ends, m.end()) for m in pattern.finditer(text)}) for pattern in _BOUNDARIES
        ]
        units = self._units(0, len(offsets), levels, 0)
        starts = [sorted({b for level in levels[:_SENTENCE_LEVELS] for b in level}), levels[_SENTENCE_LEVELS]]
        chunks = []
        for start, end in self._pack(units, starts):
            chunk = self._fit(text, offsets, start, end)
            if chunk:
                chunks.append(chunk)
        return chunks

    def _units(self, start: int, end: int, levels: list[list[int]], level: int) -> list[tuple[int, int]]:
        """Token ranges no longer than ``unit_limit``: split at the coarsest boundaries that get there."""
        if end - start <= self.unit_limit:
            return [(start, end)] if end > start else []
        if level == len(levels):  # one word longer than a chunk (a URL, a table row): cut it by tokens
            step = self.unit_limit
            return [(s, min(s + step, end)) for s in range(start, end, step)]
        inside = levels[level][bisect.bisect_right(levels[level], start) : bisect.bisect_left(levels[level], end)]
        if not inside:
            return self._units(start, end, levels, level + 1)
        units: list[tuple[int, int]] = []
        for a, b in zip([start, *inside], [*inside, end], strict=True):
            units += self._units(a, b, levels, level + 1)
        return units

    def _pack(self, units: list[tuple[int, int]], starts: list[list[int]]) -> Iterator[tuple[int, int]]:
        """Greedy packing. Each new chunk starts within the last ``chunk_overlap`` tokens of the one before, at
        the earliest sentence boundary there, else the earliest word boundary, else exactly that many tokens."""
        if not units:
            return
        start, end = units[0]
        for _, unit_end in units[1:]:
            if unit_end - start <= self.chunk_size:
                end = unit_end
                continue
            yield start, end
            new_start = end
            if self.chunk_overlap:
                new_start = end - self.chunk_overlap
                for boundaries in starts:
                    at = bisect.bisect_left(boundaries, new_start)
                    if at < len(boundaries) and boundaries[at] < end:
                        new_start = boundaries[at]
                        break
            start, end = max(new_start, start + 1, unit_end - self.chunk_size), unit_end
        yield start, end

    def _fit(self, text: str, offsets: list[tuple[int, int]], start: int, end: int) -> str:
        """The chunk's text, trimmed at its end in the rare case it re-tokenizes to more than ``chunk_size``."""
        while end > start:
            chunk = text[offsets[start][0] : offsets[end - 1][1]].strip()
            excess = self.count(chunk) - self.chunk_size
            if excess <= 0:
                return chunk
            end -= excess
        return ""


def chunk_articles(
    articles: Sequence[Article],
    chunker: Chunker,
    advance: Callable[[], Any] | None = None,
) -> PrepareResult:
    """Chunk every article into documents; exact duplicate chunks are dropped (a reader would drop them)."""
    result = PrepareResult(documents=[], token_lengths=[], articles=len(articles))
    seen: set[str] = set()
    for article in articles:
        chunks = chunker.split(article.text)
        if not chunks:
            result.empty_articles += 1
        for index, chunk in enumerate(chunks):
            if chunk in seen:
                result.duplicates += 1
                continue
            seen.add(chunk)
            metadata = {**article.extra, "source": article.source, "title": article.title, "chunk_index": index}
            result.documents.append(
                Document(
                    page_content=chunk,
                    fmt_content=format_chunk(article.source, article.title, chunk),
                    metadata=metadata,
                )
            )
            result.token_lengths.append(chunker.count(chunk))
        if advance is not None:
            advance()
    if result.empty_articles:
        log.warning("%d articles have no text and gave no chunks", result.empty_articles)
    return result


def percentile(values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]
