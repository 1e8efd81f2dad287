"""SDPA that attends within each packed example: packed batches without the flash-attn package.

For a packed row, transformers keeps the examples apart with a block-diagonal mask derived from the restarting
position ids. SDPA then scores every token against every other token of the row (most of it masked away) and,
given a mask, leaves its fused causal kernels. Attending within each example separately computes exactly the
kept scores: the same output, in time and memory that grow with each example's length instead of the whole
row's. On a CUDA GPU in half precision, PyTorch's own flash-attention kernel for variable-length batches
(``torch.nn.attention.varlen``) does that for the whole row in one call; elsewhere each example gets a causal
SDPA call, unmasked, or with a band mask where the layer's sliding window is shorter than the example. Anything
else (padded batches, generation with a cache, a position bias over the row) goes to plain SDPA with the row's
mask.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import threading
from collections.abc import Callable
from typing import Any

import torch

PACKED_SDPA = "sdpa_packed"


class MaskMemo(threading.local):
    """What an attention variant works out from a mask, once per forward pass: every layer of a pass gets the same
    mask object. The mask is held until the next one, so its id cannot be freed and reused meanwhile."""

    mask: Any = None
    value: Any = None

    def get(self, mask: Any, work_out: Callable[[Any], Any]) -> Any:
        if self.mask is not mask:
            self.mask, self.value = mask, work_out(mask)
        return self.value

    def forget(self) -> None:
        """Let the last mask go (the variant is no longer in use)."""
        self.mask = self.value = None


def packed_segments(position_ids: torch.Tensor | None, length: int) -> list[tuple[int, int]] | None:
    """(start, end) of each example in a single packed row, or None when the row is not several packed examples."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape != (1, length):
        return None
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if len(starts) < 2 or starts[0] != 0:
        return None
    return list(zip(starts, [*starts[1:], length], strict=True))


def boundary_segments(boundaries: Any, length: int) -> list[tuple[int, int]] | None:
    """(start, end) pairs from cumulative example lengths ``[0, n1, n1 + n2, ..., length]``."""
    if boundaries is None:
        return None
    ends = [int(b) for b in (boundaries.tolist() if isinstance(boundaries, torch.Tensor) else boundaries)]
    if len(ends) < 3 or ends[0] != 0 or ends[-1] != length:
        return None
    return list(itertools.pairwise(ends))


@functools.cache
def _varlen_kernel() -> tuple[Any, frozenset[str]] | None:
    """PyTorch's variable-length flash-attention function and its keyword names, where this PyTorch has it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


@functools.cache
def _device_runs_flash(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (8, 0)  # flash-attention needs Ampere or newer


def half_precision(query: torch.Tensor) -> torch.dtype | None:
    """The 16-bit dtype attention computes in here: the query's own, or autocast's (SDPA is autocast too)."""
    half = (torch.float16, torch.bfloat16)
    if query.dtype in half:
        return query.dtype
    if query.is_cuda and torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") in half:
        return torch.get_autocast_dtype("cuda")
    return None


def varlen_fits(module: torch.nn.Module, query: torch.Tensor, dropout: float, kwargs: dict[str, Any]) -> bool:
    """Whether the varlen kernel computes exactly what the per-example loop would for this layer."""
    if not query.is_cuda or half_precision(query) is None or _varlen_kernel() is None:
        return False
    if dropout or kwargs.get("softcap") or kwargs.get("position_bias") is not None or sliding_window(module, kwargs):
        return False  # windowed layers take the per-example loop, which applies the window
    return _device_runs_flash(query.device.index or 0)


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    boundaries: torch.Tensor,
    longest: int,
    scaling: float | None,
) -> torch.Tensor | None:
    """Causal attention within each example of one packed row, in a single flash-attention call.

    Takes SDPA's (1, heads, tokens, head_dim) layout and returns (1, tokens, heads, head_dim); None where this
    PyTorch's ``varlen_attn`` lacks what the layer needs (a custom scale), so the caller loops instead.
    """
    varlen_attn, accepted = _varlen_kernel()  # type: ignore[misc]
    options: dict[str, Any] = {}
    if "window_size" in accepted:
        options["window_size"] = (-1, 0)  # causal
    else:
        options["is_causal"] = True
    if scaling is not None and "scale" in accepted:
        options["scale"] = scaling
    elif scaling is not None and abs(scaling - query.shape[-1] ** -0.5) > 1e-9:
        return None
    dtype = half_precision(query) or query.dtype
    q, k, v = (tensor[0].transpose(0, 1).to(dtype) for tensor in (query, key, value))  # (tokens, heads, head_dim)
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in accepted:
            options["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    cumulative = boundaries.to(device=query.device, dtype=torch.int32)
    output = varlen_attn(q, k, v, cumulative, cumulative, longest, longest, **options)
    return output.unsqueeze(0)


def packed_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None = None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = query.shape[2]
    row = query.shape[0] == 1 and key.shape[2] == length  # one packed row, no cache continuation
    boundaries = kwargs.get("cu_seq_lens_q")  # from rqa's PackingCollator: no read-back from the device
    if row and boundaries is not None and varlen_fits(module, query, dropout, kwargs):
        longest = kwargs.get("max_length_q") or int((boundaries[1:] - boundaries[:-1]).max())
        output = varlen_attention(query, key, value, boundaries, int(longest), scaling)
        if output is not None:
            return output, None
    segments = None
    if row and kwargs.get("position_bias") is None:  # a bias over the whole row: let the row's mask handle it
        segments = boundary_segments(boundaries, length) or packed_segments(position_ids, length)
    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    kwargs.pop("is_causal", None)
    window = sliding_window(module, kwargs)
    row_mask = attention_mask if needs_row_mask(module, attention_mask) else None
    outputs = []
    for start, end in segments:
        if row_mask is not None:
            band = row_mask[..., start:end, start:end]
        elif window and end - start > window:
            band = causal_band(end - start, window, query.device)
        else:
            band = None
        outputs.append(
            sdpa_attention_forward(
                module,
                query[:, :, start:end],
                key[:, :, start:end],
                value[:, :, start:end],
                band,
                dropout,
                scaling,
                is_causal=band is None,
                **kwargs,
            )[0]
        )
    return torch.cat(outputs, dim=1), None  # (batch, tokens, heads, head_dim), as SDPA returns it


def needs_row_mask(module: torch.nn.Module, attention_mask: torch.Tensor | None) -> bool:
    """Whether the row's mask holds more than causal attention within examples: a learned bias (Doge's dynamic
    mask arrives as a float mask) or chunked attention. Each example then gets its block of that mask."""
    if attention_mask is None:
        return False
    config = getattr(module, "config", None)
    return attention_mask.dtype != torch.bool or bool(getattr(config, "attention_chunk_size", None))


def sliding_window(module: torch.nn.Module, kwargs: dict[str, Any]) -> int | None:
    """This layer's attention window: transformers passes it to attention functions (Mistral, Qwen2, Gemma's local
    layers), and some layers keep it as an attribute."""
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    return int(window) if window else None


def causal_band(length: int, window: int, device: torch.device) -> torch.Tensor:
    """Boolean mask of causal attention within ``window`` tokens: query i sees keys i - window + 1 … i, as
    transformers' sliding-window masks do."""
    positions = torch.arange(length, device=device)
    distance = positions[:, None] - positions[None, :]
    return ((distance >= 0) & (distance < window))[None, None]


def register_sdpa_variant(name: str, forward: Any) -> str:
    """Make ``name`` a valid ``attn_implementation`` that attends with ``forward`` and gets SDPA's own masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def register_packed_sdpa() -> str:
    """Make ``PACKED_SDPA`` a valid ``attn_implementation``; padded batches get SDPA's usual masks."""
    return register_sdpa_variant(PACKED_SDPA, packed_sdpa_attention_forward)
