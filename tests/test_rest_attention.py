"""A prompt's rest after a stored beginning: two fused attention calls give what one masked SDPA call gives."""

from __future__ import annotations

import torch
from helpers import embedded_tokenizer, tiny_model
from test_shared_prefixes import rag_prompts

from rqa.decoding import prefilled_cache
from rqa.rest_attention import beginning_then_causal, can_split, split_attention
from rqa.shared_prefixes import SharedPrefixes
from rqa.span_attention import own_span_attention


class GroupedHeads(torch.nn.Module):
    """A causal attention layer whose 6 query heads share 2 key/value heads (read from the tensors' shapes)."""

    is_causal = True


def rest_mask(queries: int, keys: int) -> torch.Tensor:
    stored = keys - queries
    mask = torch.ones((1, 1, queries, keys), dtype=torch.bool)
    mask[0, 0, :, stored:] = torch.ones((queries, queries), dtype=torch.bool).tril()
    return mask


def test_split_attention_equals_sdpa_with_the_mask() -> None:
    generator = torch.Generator().manual_seed(0)
    query = torch.randn((1, 6, 7, 16), generator=generator)
    key, value = (torch.randn((1, 2, 19, 16), generator=generator) for _ in range(2))
    mask = rest_mask(7, 19)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(3, dim=1), value.repeat_interleave(3, dim=1), attn_mask=mask, scale=0.3
    ).transpose(1, 2)
    assert torch.allclose(split_attention(GroupedHeads(), query, key, value, 0.3), expected, atol=1e-6)


def test_only_a_beginning_then_causal_mask_is_split() -> None:
    assert beginning_then_causal(rest_mask(4, 10), 4, 10)
    padded = rest_mask(4, 10)
    padded[..., 0] = False  # a padded position: not the plain layout
    assert not beginning_then_causal(padded, 4, 10)
    assert not beginning_then_causal(rest_mask(4, 10).float(), 4, 10)
    assert not beginning_then_causal(None, 4, 10)
    assert not beginning_then_causal(rest_mask(4, 10), 3, 10)


def test_calls_the_split_cannot_reproduce_stay_plain_sdpa() -> None:
    query, key, value = torch.zeros((1, 6, 4, 16)), torch.zeros((1, 2, 10, 16)), torch.zeros((1, 2, 10, 16))
    mask = rest_mask(4, 10)
    assert can_split(GroupedHeads(), query, key, value, mask, 0.0, {})
    assert not can_split(GroupedHeads(), query, key, value[..., :8], mask, 0.0, {})  # values of another width (MLA)
    assert not can_split(GroupedHeads(), query, key, value, mask, 0.1, {})  # dropout
    assert not can_split(GroupedHeads(), query, key, value, mask, 0.0, {"sliding_window": 4})
    assert not can_split(GroupedHeads(), query.expand(2, -1, -1, -1), key, value, mask, 0.0, {})  # a batch


def test_a_prompt_s_rest_runs_split_and_fills_the_same_cache(monkeypatch) -> None:
    tokenizer = embedded_tokenizer()
    model = tiny_model(tokenizer, seed=7, attn_implementation="sdpa").eval()
    prompts = rag_prompts(tokenizer)
    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(1)
        return split_attention(*args, **kwargs)

    monkeypatch.setattr("rqa.span_attention.split_attention", counted)
    with torch.no_grad():
        whole = prefilled_cache(model, prompts, max_new_tokens=4)
        with own_span_attention(model) as used:
            shared = prefilled_cache(model, prompts, max_new_tokens=4, prefixes=SharedPrefixes(prompts))
    assert used and calls  # the prompts after the first start from a stored beginning
    assert len(calls) % model.config.num_hidden_layers == 0
    for first, second in zip(whole.layers, shared.layers, strict=True):
        assert torch.allclose(first.keys, second.keys, atol=1e-5)
        assert torch.allclose(first.values, second.values, atol=1e-5)
