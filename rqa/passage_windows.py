"""Passages longer than an embedder reads, embedded as overlapping windows and scored by their best one.

An embedder reads a fixed number of tokens (all-MiniLM-L6-v2: 256) and silently drops the rest, so a question
about the end of a long passage can only match its beginning; on a help centre that beginning is the title every
chunk of an article shares. With windows, each passage is cut into pieces that fit, each piece repeating what the
passage's text puts before its content (source, title), and a passage scores as its best window (MaxP, Dai &
Callan 2019). Passages that fit are one window, embedded exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rqa.errors import RqaError


def split_windows(text: str, content: str, tokenizer: Any, size: int) -> list[str]:
    """``text`` as pieces of at most ``size`` tokens (special tokens included), each half overlapping the next.

    ``content`` is the part of ``text`` that is cut (a document's ``page_content``); what comes before it (a
    prefix, source, title) starts every window. Where ``text`` does not end with ``content``, all of it is cut."""
    if not getattr(tokenizer, "is_fast", False):
        raise RqaError("passage windows need a fast (Rust) tokenizer, to map tokens back to the text")
    at = text.rfind(content) if content else -1
    head, body = (text[:at], text[at:]) if at >= 0 and text[at:] == content else ("", text)
    budget = size - tokenizer.num_special_tokens_to_add(pair=False)
    head_tokens = len(tokenizer(head, add_special_tokens=False)["input_ids"]) if head else 0
    if head_tokens > budget // 2:  # a header this long would crowd the content out: cut everything instead
        head, body, head_tokens = "", text, 0
    offsets = tokenizer(body, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    width = budget - head_tokens
    if len(offsets) <= width:
        return [text]
    stride = max(1, width // 2)
    windows = []
    for start in range(0, len(offsets), stride):
        end = min(start + width, len(offsets))
        windows.append(head + body[offsets[start][0] : offsets[end - 1][1]])
        if end == len(offsets):
            break
    return windows


def window_texts(
    texts: Sequence[str], contents: Sequence[str], tokenizer: Any, size: int
) -> tuple[list[str], list[int]]:
    """Every window of every text, and for each the index of the text it came from."""
    windows: list[str] = []
    owners: list[int] = []
    for index, (text, content) in enumerate(zip(texts, contents, strict=True)):
        pieces = split_windows(text, content, tokenizer, size)
        windows += pieces
        owners += [index] * len(pieces)
    return windows, owners


def best_per_passage(ids: Iterable[int], scores: Iterable[float], k: int) -> list[tuple[int, float]]:
    """The first ``k`` distinct passages of a ranking of windows, each at its best (first) window's score."""
    seen: set[int] = set()
    best: list[tuple[int, float]] = []
    for passage, score in zip(ids, scores, strict=True):
        if passage >= 0 and passage not in seen:
            seen.add(passage)
            best.append((int(passage), float(score)))
            if len(best) == k:
                break
    return best
