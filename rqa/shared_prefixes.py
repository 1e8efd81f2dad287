"""Prompt beginnings computed once per generation and reused by every later prompt that begins the same way.

Evaluation prompts share more than their instruction: questions about one article retrieve the same first
passage, and a chat prompt puts the passages before the question. On the Faire eval set (73 questions, top 4
passages, chatml prompts) 13 % of all prompt tokens repeat an earlier prompt's beginning; prompt processing is
compute-bound on a CPU, so those tokens are time saved. A prompt's keys and values at a position depend only on the
tokens up to it, so a later prompt starts from the stored keys and values of the common beginning and computes the
rest: the same numbers up to rounding, as with any change of batch shape.

A beginning of ``MIN_SHARED_TOKENS`` or more is reused; the rest of the prompt then attends to it through
``rqa.rest_attention``, at the per-token cost of a whole prompt. Prompts sorted as token sequences put the
prompt sharing most with a given one next to it, so what each prompt could pass on is its common length with its
sorted neighbours, and the best stored beginning for a new prompt is the nearest stored one on either side. What
all prompts share (the instruction) is kept once; longer beginnings are kept per *group* (neighbours sharing at
least ``minimum`` tokens beyond it) and dropped when the group's last prompt has been computed, so memory follows
the groups being worked on, not the size of the evaluation.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

MIN_SHARED_TOKENS = 32  # a shorter common beginning is computed again: reusing it saves less than it costs


def common_length(first: Sequence[int], second: Sequence[int]) -> int:
    """How many leading tokens two sequences share."""
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


Layers = list[tuple[Any, Any]]  # each layer's (keys, values), shaped (1, heads, positions, head_dim)


class SharedPrefixes:
    """The keys and values of prompt beginnings that later prompts of the same generation start from.

    Built from every prompt the generation may compute (each caches all but its last token, see
    ``rqa.decoding.prefilled_cache``); ``start`` gives a prompt's reusable beginning, ``computed`` stores what the
    prompts still to come can reuse of one just computed.
    """

    def __init__(self, prompts: Sequence[Sequence[int]], minimum: int | None = None) -> None:
        self.minimum = minimum = MIN_SHARED_TOKENS if minimum is None else minimum
        counts: dict[tuple[int, ...], int] = {}
        for ids in prompts:
            key = tuple(ids[:-1])
            counts[key] = counts.get(key, 0) + 1
        self._order = sorted(counts)
        adjacent = [common_length(a, b) for a, b in itertools.pairwise(self._order)]
        self._everyone = min(adjacent) if adjacent else 0  # the beginning that every prompt shares
        # what a prompt can pass on: all of it to a copy of itself, else its common length with a neighbour
        around = [0, *adjacent, 0]
        self._next_to = [
            len(key) if counts[key] > 1 else max(around[position], around[position + 1])
            for position, key in enumerate(self._order)
        ]
        self._group: list[int] = []
        for position in range(len(self._order)):
            joined = position > 0 and adjacent[position - 1] >= self._everyone + minimum
            self._group.append(self._group[-1] if joined else position)
        self._left: dict[int, int] = {}  # prompts of each group not computed yet
        for key, count in counts.items():
            group = self._group[self._position(key)]
            self._left[group] = self._left.get(group, 0) + count
        self._common: Layers | None = None
        self._stored: dict[int, Layers] = {}  # by position in the sorted order
        self._stored_positions: list[int] = []

    def _position(self, key: tuple[int, ...]) -> int:
        return bisect_left(self._order, key)

    def start(self, ids: Sequence[int]) -> tuple[int, Layers | None]:
        """How many leading tokens of ``ids`` need no computing, and their keys and values (or ``(0, None)``)."""
        key = tuple(ids[:-1])
        position = self._position(key)
        length, layers = (self._everyone, self._common) if self._common is not None else (0, None)
        nearest = bisect_left(self._stored_positions, position)
        for neighbour in self._stored_positions[max(nearest - 1, 0) : nearest + 1]:
            shared = common_length(self._order[neighbour], key)
            if shared > length:
                length, layers = shared, self._stored[neighbour]
        if layers is None or length < self.minimum:
            return 0, None
        return length, [(keys[:, :, :length], values[:, :, :length]) for keys, values in layers]

    def computed(self, ids: Sequence[int], layers: Layers) -> None:
        """Keep what prompts still to come can reuse of a prompt just computed (``layers``: its cached part)."""
        key = tuple(ids[:-1])
        position = self._position(key)
        if position == len(self._order) or self._order[position] != key:
            return  # not a prompt this generation was planned with: nothing counts on it
        group = self._group[position]
        self._left[group] -= 1
        if self._common is None and self._everyone >= self.minimum and len(self._order) > 1:
            self._common = [(k[:, :, : self._everyone].clone(), v[:, :, : self._everyone].clone()) for k, v in layers]
        if self._left[group] == 0:
            for stored in [p for p in self._stored_positions if self._group[p] == group]:
                del self._stored[stored]
                self._stored_positions.remove(stored)
            return
        keep = self._next_to[position]
        if keep >= self._everyone + self.minimum and position not in self._stored:
            self._stored[position] = [(k[:, :, :keep].clone(), v[:, :, :keep].clone()) for k, v in layers]
            self._stored_positions.insert(bisect_left(self._stored_positions, position), position)
