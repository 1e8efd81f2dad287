"""SDPA that attends within each packed example: packed batches without a variable-length kernel.

For a packed row, transformers keeps the examples apart with a block-diagonal mask derived from the restarting
position ids. SDPA then scores every token against every other token of the row (most of it masked away) and,
given a mask, leaves its fused causal kernels. Attending within each example separately, causally and without a
mask, computes exactly the kept scores: the same output, in time and memory that grow with each example's length
instead of the whole row's. Anything else (padded batches, generation with a cache) goes to plain SDPA.
"""

from __future__ import annotations

from typing import Any

import torch

PACKED_SDPA = "sdpa_packed"


def packed_segments(position_ids: torch.Tensor | None, length: int) -> list[tuple[int, int]] | None:
    """(start, end) of each example in a single packed row, or None when the row is not several packed examples."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape != (1, length):
        return None
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if len(starts) < 2 or starts[0] != 0:
        return None
    return list(zip(starts, [*starts[1:], length], strict=True))


def packed_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = query.shape[2]
    segments = packed_segments(position_ids, length) if key.shape[2] == length else None
    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    outputs = [
        sdpa_attention_forward(
            module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], None, is_causal=True, **kwargs
        )[0]
        for start, end in segments
    ]
    return torch.cat(outputs, dim=1), None  # (batch, tokens, heads, head_dim), as SDPA returns it


def register_packed_sdpa() -> str:
    """Make ``PACKED_SDPA`` a valid ``attn_implementation``; padded batches get SDPA's usual masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention_forward)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)
    return PACKED_SDPA
