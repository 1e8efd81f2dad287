"""Decoding that reads each row's own span of the static cache: the same answers from fewer reads."""

from __future__ import annotations

import pytest
import torch
from helpers import embedded_tokenizer, tiny_model
from test_generation import one_at_a_time

from rqa.span_attention import SPAN_SDPA, own_span_attention, row_spans, runs


def test_rows_far_apart_get_calls_of_their_own_and_close_ones_share_one() -> None:
    assert runs([0, 0, 600, 600], [1000] * 4, call_cost=256) == [(0, 2, 0, 1000), (2, 4, 600, 1000)]
    assert runs([0, 5, 10], [100] * 3, call_cost=256) == [(0, 3, 0, 100)]
    assert runs([0, 5], [100, 100], call_cost=0) == [(0, 1, 0, 100), (1, 2, 5, 100)]
    # unsorted rows: a run is consecutive rows, reading from its earliest start to its latest end
    assert runs([600, 0, 600], [1000] * 3, call_cost=10**6) == [(0, 3, 0, 1000)]


def test_row_spans_come_from_the_mask_and_a_gap_in_a_row_means_no_spans() -> None:
    mask = torch.zeros(3, 1, 1, 10, dtype=torch.bool)
    mask[0, ..., 0:7] = True
    mask[1, ..., 4:7] = True
    mask[2, ..., 6:7] = True
    assert row_spans(mask) == ([0, 4, 6], [7, 7, 7])
    mask[0, ..., 2] = False
    assert row_spans(mask) is None


def test_decoding_reads_each_rows_own_span_and_answers_as_one_prompt_at_a_time(monkeypatch) -> None:
    import transformers.integrations.sdpa_attention as sdpa

    import rqa.span_attention as span_attention
    from rqa.generation import generate_answers

    monkeypatch.setattr(span_attention, "CALL_COST", 0)  # every distinct start gets a call of its own
    steps: list[tuple[int, int]] = []  # (rows, keys) of every decoding call
    plain = sdpa.sdpa_attention_forward

    def counting(module, query, key, *args, **kwargs):
        if query.shape[2] == 1:
            steps.append((query.shape[0], key.shape[2]))
        return plain(module, query, key, *args, **kwargs)

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", counting)
    tokenizer = embedded_tokenizer()
    model = tiny_model(tokenizer, seed=3)
    texts = ["Hi", "Why does the kettle click off early when the water is cold? " * 8, "descale " * 60]
    prompts = [tokenizer(text)["input_ids"] for text in texts]
    expected = one_at_a_time(model, tokenizer, prompts, max_new_tokens=10)
    steps.clear()
    answers, _ = generate_answers(model, tokenizer, prompts, "<|im_end|>", 10, batches=[[2, 1, 0]], prompt_lookup=0)
    assert answers == expected
    assert model.config._attn_implementation == "sdpa"  # restored
    lengths = sorted(len(ids) for ids in prompts)
    assert lengths[0] < lengths[1] < lengths[2]
    whole_cache = lengths[-1] - 1 + 10
    decoding_steps = len(steps) // 3 // model.config.num_hidden_layers
    assert decoding_steps >= 9 and {rows for rows, _ in steps} == {1}  # three starts apart: a call per row
    read = sum(keys for _, keys in steps) / model.config.num_hidden_layers
    assert read < 0.8 * decoding_steps * 3 * whole_cache  # rather than every row reading the whole cache


def test_other_attention_implementations_are_left_alone() -> None:
    tokenizer = embedded_tokenizer()
    model = tiny_model(tokenizer, seed=3, attn_implementation="eager")
    with own_span_attention(model) as used:
        assert not used and model.config._attn_implementation == "eager"
    model = tiny_model(tokenizer, seed=3)
    with own_span_attention(model) as used:
        assert used and model.config._attn_implementation == SPAN_SDPA
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_other_llama_like_families_answer_the_same(family: str) -> None:
    from rqa.generation import generate_answers

    tokenizer = embedded_tokenizer()
    model = tiny_model(tokenizer, seed=4, family=family, sliding_window=None)
    texts = ["Hi there", "How do I descale the kettle? " * 10, "kettle " * 30]
    prompts = [tokenizer(text)["input_ids"] for text in texts]
    expected = one_at_a_time(model, tokenizer, prompts, max_new_tokens=8)
    answers, _ = generate_answers(model, tokenizer, prompts, "<|im_end|>", 8, batches=[[1, 2, 0]], prompt_lookup=0)
    assert answers == expected
