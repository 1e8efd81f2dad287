"""Decoding steps that read each row's own span of a left-padded static cache, not the whole cache.

A batch decoding on a CPU (``rqa.decoding``) keeps every row in one static cache: left-padded to the batch's
longest prompt, with room for the whole answer. Plain SDPA reads the full cache length for every row at every
step (padding and positions not yet written included, masked away), and those reads are what a batched decoding
step's attention costs on a CPU: measured on 2 cores with 32 rows of Faire prompts, attention was 63 % of a step.

Here the rows of a step are split into runs of consecutive rows, and each run's SDPA call reads from its
earliest row's first token to the last position written, with the same mask cut to that range. A masked position
adds nothing to a row's softmax, so every row attends to the same keys with the same weights. ``runs`` chooses
the split that reads least, counting each extra call as ``CALL_COST`` row positions read. Anything else (a prompt's
forward pass, masks that are not one contiguous span per row, float masks, a position bias) is plain SDPA, but for
the rest of a prompt that starts from a stored beginning, which ``rqa.rest_attention`` attends to in two fused calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from rqa.attention import PACKED_SDPA, MaskMemo, register_sdpa_variant
from rqa.rest_attention import can_split, checked_masks, split_attention

SPAN_SDPA = "sdpa_spans"
CALL_COST = 256  # one SDPA call per layer costs about what reading 256 row positions does (2-core CPU, fp32)


def runs(firsts: Sequence[int], ends: Sequence[int], call_cost: int = CALL_COST) -> list[tuple[int, int, int, int]]:
    """(first row, end row, first position, end position) of each SDPA call, for the consecutive-row split whose
    reads plus ``call_cost`` per call are smallest (every row of a run reads the run's whole range)."""
    count = len(firsts)
    best = [0.0] + [float("inf")] * count
    cut = [0] * (count + 1)
    for end_row in range(1, count + 1):
        low, high = firsts[end_row - 1], ends[end_row - 1]
        for start_row in range(end_row - 1, -1, -1):  # grow the run backwards from end_row - 1
            low, high = min(low, firsts[start_row]), max(high, ends[start_row])
            cost = best[start_row] + call_cost + (end_row - start_row) * (high - low)
            if cost < best[end_row]:
                best[end_row], cut[end_row] = cost, start_row
    split: list[tuple[int, int, int, int]] = []
    end_row = count
    while end_row > 0:
        start_row = cut[end_row]
        low = min(firsts[start_row:end_row])
        high = max(ends[start_row:end_row])
        split.append((start_row, end_row, low, high))
        end_row = start_row
    return split[::-1]


def row_spans(mask: torch.Tensor) -> tuple[list[int], list[int]] | None:
    """Each row's first attended position and the position after its last, from a (batch, 1, 1, length) boolean
    mask; None where some row's attended positions are not one contiguous span."""
    attended = mask[:, 0, 0, :]
    length = attended.shape[-1]
    firsts = attended.to(torch.int8).argmax(dim=-1)
    ends = length - attended.flip(-1).to(torch.int8).argmax(dim=-1)
    if not bool((attended.sum(dim=-1) == ends - firsts).all()):
        return None
    return firsts.tolist(), ends.tolist()


step_plans = MaskMemo()  # the split of the current decoding step


def _split_for(mask: Any, query: torch.Tensor, key: torch.Tensor, kwargs: dict[str, Any]) -> Any:
    if query.shape[2] != 1 or not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        return None
    if mask.dim() != 4 or mask.shape[1:3] != (1, 1) or mask.shape[-1] != key.shape[2] or mask.shape[0] != key.shape[0]:
        return None
    if kwargs.get("position_bias") is not None or kwargs.get("sliding_window"):
        return None
    return step_plans.get(mask, _plan)


def _plan(mask: torch.Tensor) -> list[tuple[int, int, int, int]] | None:
    spans = row_spans(mask)
    return runs(*spans, CALL_COST) if spans is not None else None


def span_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if can_split(module, query, key, value, attention_mask, dropout, kwargs):
        return split_attention(module, query, key, value, scaling), None  # a prompt's rest after its beginning
    split = _split_for(attention_mask, query, key, kwargs)
    if split is None or (len(split) == 1 and split[0][2:] == (0, key.shape[2])):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    assert attention_mask is not None
    outputs = [
        sdpa_attention_forward(
            module,
            query[first:end],
            key[first:end, :, low:high],
            value[first:end, :, low:high],
            attention_mask[first:end, :, :, low:high],
            dropout,
            scaling,
            **kwargs,
        )[0]
        for first, end, low, high in split
    ]
    return torch.cat(outputs), None  # (batch, 1, heads, head_dim), as SDPA returns it


@contextmanager
def own_span_attention(model: Any) -> Iterator[bool]:
    """Decode with each row reading its own span, where the model attends with SDPA (yields whether it does)."""
    current = getattr(model.config, "_attn_implementation", None)
    if current not in ("sdpa", PACKED_SDPA) or not hasattr(model, "set_attn_implementation"):
        yield False
        return
    model.set_attn_implementation(register_sdpa_variant(SPAN_SDPA, span_sdpa_attention_forward))
    try:
        yield True
    finally:
        model.set_attn_implementation(current)
        step_plans.forget()
        checked_masks.forget()
