"""Attention for the rest of a prompt whose beginning's keys and values are stored (``rqa.shared_prefixes``).

The rest's queries see every stored position and, causally, each other. transformers makes that one SDPA call
with an explicit mask, which computes the whole square of the rest against itself and reads the mask: measured on
2 cores (SmolLM2-135M, best of six), a 900-token prompt's last 844 tokens took 1.65 ms each after its first 56
were stored, more than the 1.56 ms per token of the whole prompt at once, so a short shared beginning saved nothing.
Here it is two calls of the CPU flash kernel instead, the stored beginning unmasked and the rest causal, each with
its log-sum-exp, merged as flash attention merges its blocks: the same softmax over the same keys, up to rounding
(1.55 ms per token in the same measurement).
"""

from __future__ import annotations

from typing import Any

import torch

from rqa.attention import MaskMemo

# what the attention interface may pass that this split does not reproduce
_UNSUPPORTED = ("position_bias", "sliding_window", "softcap", "s_aux", "sinks")


checked_masks = MaskMemo()  # whether a forward pass's mask is the plain beginning-then-causal one


def beginning_then_causal(mask: Any, queries: int, keys: int) -> bool:
    """Whether ``mask`` lets every query see all ``keys - queries`` stored positions and, causally, the rest."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (1, 1, queries, keys):
        return False
    return checked_masks.get(mask, _is_plain)


def _is_plain(mask: torch.Tensor) -> bool:
    queries, keys = mask.shape[-2:]
    expected = torch.ones((queries, keys), dtype=torch.bool, device=mask.device)
    expected[:, keys - queries :] = torch.ones((queries, queries), dtype=torch.bool, device=mask.device).tril()
    return torch.equal(mask[0, 0], expected)


def can_split(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any, dropout: float, kwargs: dict
) -> bool:
    """Whether this attention call is one prompt's rest after a stored beginning, which ``split_attention`` does."""
    queries, keys = query.shape[2], key.shape[2]
    return (
        1 < queries < keys
        and query.shape[0] == 1
        and query.device.type == "cpu"
        and query.shape[-1] == key.shape[-1] == value.shape[-1]  # the CPU flash kernel's own limit (not MLA)
        and query.dtype == key.dtype == value.dtype  # the kernel is called directly: no autocast casts for it
        and not torch.is_autocast_enabled("cpu")
        and dropout == 0.0
        and getattr(module, "is_causal", True)
        and not any(kwargs.get(name) is not None for name in _UNSUPPORTED)
        and beginning_then_causal(mask, queries, keys)
    )


def split_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None
) -> torch.Tensor:
    """SDPA of the rest's queries over the stored beginning plus the rest itself (causal), in two fused calls;
    returned as attention interfaces return it: (batch, queries, heads, head_dim)."""
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    stored = key.shape[2] - query.shape[2]
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    early, early_lse = flash(query, key[:, :, :stored], value[:, :, :stored], 0.0, False, scale=scaling)[:2]
    late, late_lse = flash(query, key[:, :, stored:], value[:, :, stored:], 0.0, True, scale=scaling)[:2]
    total = torch.logaddexp(early_lse, late_lse)
    merged = early * (early_lse - total).exp().unsqueeze(-1).to(early.dtype)
    merged += late * (late_lse - total).exp().unsqueeze(-1).to(late.dtype)
    return merged.transpose(1, 2).contiguous()
