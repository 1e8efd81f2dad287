"""RAFT-style training context: gold mixed with distractors, shuffled, sometimes left out; reproducible."""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers import document, example

from rqa.context import RaftContext, hard_negatives


def item():
    negatives = tuple(document(f"Distractor {i} about warranties.") for i in range(5))
    return replace(example(), hard_neg_docs=negatives)


def test_gold_is_mixed_with_distractors_in_varying_positions() -> None:
    raft = RaftContext(distractors=3, keep_gold=1.0)
    gold = item().gold_docs[0]
    positions = set()
    for index in range(40):
        passages = raft.passages(item(), index, hard_negatives(item()))
        assert len(passages) == 4 and passages.count(gold) == 1
        positions.add(passages.index(gold))
    assert positions == {0, 1, 2, 3}


def test_gold_is_left_out_at_the_requested_rate_and_choices_repeat() -> None:
    raft = RaftContext(distractors=2, keep_gold=0.7, seed=3)
    gold = item().gold_docs[0]
    kept = [gold in raft.passages(item(), i, hard_negatives(item())) for i in range(400)]
    assert 0.62 < sum(kept) / len(kept) < 0.78
    assert [raft.passages(item(), 7, hard_negatives(item()))] == [raft.passages(item(), 7, hard_negatives(item()))]


def test_distractors_never_duplicate_the_gold_and_gold_stays_without_candidates() -> None:
    raft = RaftContext(distractors=3, keep_gold=0.0)
    gold = item().gold_docs[0]
    candidates = [gold, *item().hard_neg_docs]
    assert all(gold not in raft.passages(item(), i, candidates) for i in range(20))
    assert raft.passages(item(), 0, []) == [gold]  # nothing to mix in: the gold passage stays


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        RaftContext(distractors=-1)
    with pytest.raises(ValueError):
        RaftContext(keep_gold=1.5)
