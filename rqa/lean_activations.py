"""Keep fewer activations for the backward pass of RMSNorm and SwiGLU layers: less training memory, same numbers.

Autograd keeps every intermediate a layer's backward might read. For Llama's RMSNorm that is an fp32 copy of the
input (under bf16) and the normalised result beside the input itself; for its SwiGLU MLP the gate, its SiLU and
the up projection, and the down projection's input, their product. Recomputing the cheap elementwise parts in
the backward pass instead keeps only the norm's input (and one fp32 scale per token) and the gate and up
projections: SmolLM2-135M in bf16 keeps 0.42 MB per token for backward instead of 0.74 (weights aside).
Liger Kernel does the same with Triton kernels on GPUs; these are plain PyTorch operations, so they run
wherever the model runs.

A module is changed only when its ``forward`` is the very code of Llama's (as in the many families that copy it:
Mistral, Qwen2/3, Granite, ...) and, for an MLP, its activation is SiLU, so the forward computes exactly what the
original does, operation by operation; any other norm or MLP is left as it is.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch
import torch.nn.functional as F


class _RMSNormFunction(torch.autograd.Function):
    """Llama's RMSNorm, keeping the input and the per-token scale for the backward pass."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        normed, scale = _rms_normalise(hidden, eps)
        ctx.save_for_backward(hidden, weight, scale)
        return weight * normed

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        hidden, weight, scale = ctx.saved_tensors
        normed, _ = _rms_normalise(hidden, scale=scale)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed).reshape(-1, normed.shape[-1]).sum(0).to(weight.dtype)
        grad_hidden = None
        if ctx.needs_input_grad[0]:
            # autograd casts each gradient to its input's dtype: the same casts as the original's backward
            grad_normed = (grad * weight).to(normed.dtype).float()
            hidden32 = hidden.float()
            correction = (grad_normed * hidden32).mean(-1, keepdim=True) * scale.pow(2)
            grad_hidden = (scale * (grad_normed - hidden32 * correction)).to(hidden.dtype)
        return grad_hidden, grad_weight, None


def _rms_normalise(
    hidden: torch.Tensor, eps: float = 0.0, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama's RMSNorm before its weight, operation for operation, and the fp32 scale it used."""
    hidden32 = hidden.to(torch.float32)
    if scale is None:
        scale = torch.rsqrt(hidden32.pow(2).mean(-1, keepdim=True) + eps)
    return (hidden32 * scale).to(hidden.dtype), scale


class _SwiGLUFunction(torch.autograd.Function):
    """``silu(gate) * up``, keeping only ``gate`` and ``up`` for the backward pass."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        return _swiglu_backward(grad, gate, up)


class _SwiGLUDownFunction(torch.autograd.Function):
    """``down_proj(silu(gate) * up)`` for a plain linear ``down_proj``: the product its weight gradient needs is
    recomputed from ``gate`` and ``up`` instead of kept beside them."""

    @staticmethod
    def forward(
        ctx: Any, gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        product = F.silu(gate).mul_(up)
        output = F.linear(product, weight, bias)  # under autocast, in its dtype, as the original's
        ctx.save_for_backward(gate, up, weight)
        ctx.compute_dtype, ctx.has_bias = output.dtype, bias is not None
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        gate, up, weight = ctx.saved_tensors
        silu = F.silu(gate)
        grad = grad.to(ctx.compute_dtype)
        flat_grad = grad.reshape(-1, grad.shape[-1])
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[2]:
            product = (silu * up).to(ctx.compute_dtype).reshape(-1, up.shape[-1])
            grad_weight = (flat_grad.t() @ product).to(weight.dtype)
            del product  # freed before the next product: one gate-sized tensor fewer at a time
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = flat_grad.sum(0).to(weight.dtype)
        grad_product = (grad @ weight.to(ctx.compute_dtype)).to(up.dtype)
        grad_gate, grad_up = _swiglu_backward(grad_product, gate, up, silu)
        return grad_gate, grad_up, grad_weight, grad_bias


def _swiglu_backward(
    grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, silu: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``silu(gate) * up`` for ``gate`` and ``up``, as autograd computes them for the original (SiLU's
    own fused backward), into tensors of its own where it can: on a CPU these passes are bound by memory. ``silu``
    (``F.silu(gate)``, recomputed when not given) is overwritten."""
    silu = F.silu(gate) if silu is None else silu
    grad_silu = grad * up
    grad_up = silu.mul_(grad)
    grad_gate = torch.ops.aten.silu_backward.grad_input(grad_silu, gate, grad_input=grad_silu)
    return grad_gate, grad_up


def _rms_norm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and (hidden_states.requires_grad or self.weight.requires_grad):
        return _RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon)
    normed, _ = _rms_normalise(hidden_states, self.variance_epsilon)
    return self.weight * normed


def _swiglu_mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    gate, up = self.gate_proj(x), self.up_proj(x)
    if not (torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad)):
        return self.down_proj(F.silu(gate) * up)
    down = self.down_proj
    if type(down) is torch.nn.Linear and "forward" not in vars(down):  # not LoRA-wrapped, quantised or hooked
        return _SwiGLUDownFunction.apply(gate, up, down.weight, down.bias)
    return down(_SwiGLUFunction.apply(gate, up))


@functools.cache
def _llama_code() -> tuple[Any, Any]:
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    return LlamaRMSNorm.forward.__code__, LlamaMLP.forward.__code__


def _same_code(method: Any, reference: types.CodeType) -> bool:
    """True when ``method`` is compiled from the same statements as ``reference`` (docstrings and lines aside)."""
    code = getattr(method, "__code__", None)
    if code is None:
        return False

    def constants(c: types.CodeType) -> tuple[Any, ...]:
        return tuple(k for k in c.co_consts if not isinstance(k, str))

    return (code.co_code, code.co_names, constants(code)) == (
        reference.co_code,
        reference.co_names,
        constants(reference),
    )


def _is_silu(module: Any) -> bool:
    return isinstance(module, torch.nn.SiLU) or type(module).__name__ in ("SiLUActivation", "SiLU")


def keep_fewer_activations(model: torch.nn.Module) -> int:
    """Give every Llama-style RMSNorm and SiLU-gated MLP of ``model`` the lean backward; how many were changed.

    Only the instances change (their ``forward``), not the classes, so other models in the process are untouched
    and the saved weights are the same. A module whose ``forward`` something else already replaced is left alone.
    """
    norm_code, mlp_code = _llama_code()
    changed = 0
    for module in model.modules():
        if "forward" in vars(module):
            continue
        forward = type(module).forward
        if _same_code(forward, norm_code) and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_rms_norm_forward, module)
            changed += 1
        elif _same_code(forward, mlp_code) and _is_silu(getattr(module, "act_fn", None)):
            module.forward = types.MethodType(_swiglu_mlp_forward, module)
            changed += 1
    return changed
