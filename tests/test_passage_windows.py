"""Cutting long passages into windows that fit the embedder, and ranking passages by their best window."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from rqa.errors import RqaError
from rqa.passage_windows import best_per_passage, split_windows, window_texts

CONTENT = " ".join(f"Step {i}: press the blue button number {i} and wait for the green light." for i in range(40))
TEXT = f"Source: https://help.example.com/1\nTitle: Pairing\nContent:\n{CONTENT}"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """all-MiniLM-L6-v2's own tokenizer (fast), from the embedded package."""
    from transformers import AutoTokenizer

    from rqa.models import DEFAULT_EMBEDDER, resolve_embedder

    return AutoTokenizer.from_pretrained(resolve_embedder(DEFAULT_EMBEDDER))


def tokens(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, verbose=False)["input_ids"]


def test_a_passage_that_fits_is_one_window_as_it_is(tokenizer: Any) -> None:
    assert split_windows(TEXT, CONTENT, tokenizer, 2048) == [TEXT]


def test_a_long_passage_is_cut_into_overlapping_windows_that_each_fit_and_keep_the_header(tokenizer: Any) -> None:
    head = TEXT[: TEXT.index(CONTENT)]
    windows = split_windows(TEXT, CONTENT, tokenizer, 64)
    assert len(windows) > 4
    assert all(w.startswith(head) for w in windows)
    assert all(len(tokens(tokenizer, w)) <= 64 for w in windows)
    pieces = [w[len(head) :] for w in windows]
    assert pieces[0] == CONTENT[: len(pieces[0])] and CONTENT.endswith(pieces[-1])  # first and last words kept
    for step in range(40):  # every sentence's words reach some window
        assert any(f"number {step} and" in piece for piece in pieces), step
    for before, after in itertools.pairwise(pieces):  # each window overlaps the next by about half
        assert CONTENT.index(after) < CONTENT.index(before) + len(before)


def test_a_header_longer_than_half_a_window_is_cut_with_the_rest(tokenizer: Any) -> None:
    long_head = "Title: " + "very " * 40 + "\nContent:\n"
    windows = split_windows(long_head + CONTENT, CONTENT, tokenizer, 64)
    assert windows[0].startswith(long_head[:20]) and not windows[1].startswith("Title")


def test_text_not_ending_with_its_content_is_cut_whole(tokenizer: Any) -> None:
    windows = split_windows(TEXT, "not in the text", tokenizer, 64)
    assert windows[0].startswith("Source:") and not windows[1].startswith("Source:")


def test_windows_know_their_passage(tokenizer: Any) -> None:
    windows, owners = window_texts(["short", TEXT, "also short"], ["short", CONTENT, "also short"], tokenizer, 64)
    assert windows[0] == "short" and windows[-1] == "also short"
    assert owners[0] == 0 and owners[-1] == 2 and set(owners[1:-1]) == {1} and len(owners) == len(windows)


def test_a_slow_tokenizer_is_refused_clearly() -> None:
    class Slow:
        is_fast = False

    with pytest.raises(RqaError, match="fast"):
        split_windows(TEXT, CONTENT, Slow(), 64)


def test_each_passage_ranks_once_at_its_best_window() -> None:
    ranked = best_per_passage([3, 3, 1, -1, 3, 2, 0], [0.9, 0.8, 0.7, 0.0, 0.6, 0.5, 0.4], 3)
    assert ranked == [(3, 0.9), (1, pytest.approx(0.7)), (2, 0.5)]
    assert best_per_passage([1, 1], [0.5, 0.4], 4) == [(1, 0.5)]
