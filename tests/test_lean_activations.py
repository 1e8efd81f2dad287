"""Lean activations: the same forward, the same gradients within rounding, fewer bytes kept for backward."""

from __future__ import annotations

import copy

import pytest
import torch
from model_families import tiny_model

from rqa.lean_activations import keep_fewer_activations


def kept_bytes(model: torch.nn.Module, ids: torch.Tensor) -> int:
    """Bytes of distinct storages autograd keeps for the backward pass of one forward (weights included)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids).logits.float().sum().backward()
    return sum(storages.values())


def forward_and_gradients(
    model: torch.nn.Module, ids: torch.Tensor, autocast: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids).logits
    (logits.float().log_softmax(-1)[..., 3].mean()).backward()
    return logits.detach(), {n: p.grad.detach().float().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "mixed bf16"])
def test_llama_changes_every_norm_and_mlp_and_trains_the_same(precision: str) -> None:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    autocast = precision == "mixed bf16"  # fp32 weights, bf16 matrix products (--bf16)
    original = tiny_model("llama").to(dtype).eval()
    lean = copy.deepcopy(original)
    layers = original.config.num_hidden_layers
    assert keep_fewer_activations(lean) == 2 * layers + 1 + layers  # two norms per layer, the final norm, the MLPs
    ids = torch.randint(3, original.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    logits, grads = forward_and_gradients(original, ids, autocast)
    lean_logits, lean_grads = forward_and_gradients(lean, ids, autocast)
    assert torch.equal(lean_logits, logits)  # the forward is the original's, operation for operation
    tolerance = {"rtol": 1e-4, "atol": 1e-6} if precision == "fp32" else {"rtol": 0.05, "atol": 2e-3}
    for name, grad in grads.items():
        torch.testing.assert_close(lean_grads[name], grad, **tolerance, msg=name)
    with torch.no_grad():
        assert torch.equal(lean(input_ids=ids).logits, original(input_ids=ids).logits)


def test_bf16_keeps_fewer_bytes_for_backward() -> None:
    original = tiny_model("llama").to(torch.bfloat16)
    lean = copy.deepcopy(original)
    keep_fewer_activations(lean)
    ids = torch.randint(3, original.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    weights = sum(p.numel() * p.element_size() for p in original.parameters())
    before, after = kept_bytes(original, ids) - weights, kept_bytes(lean, ids) - weights
    assert after < 0.75 * before, (before, after)


def test_other_norms_and_activations_are_left_alone() -> None:
    gemma = tiny_model("gemma")  # RMSNorm scaled by (1 + weight), GELU-gated MLP
    assert keep_fewer_activations(gemma) == 0
    llama = tiny_model("llama")
    replaced = llama.model.norm
    replaced.forward = lambda hidden: hidden  # someone else's hook on one module
    assert keep_fewer_activations(llama) == 3 * llama.config.num_hidden_layers
    assert keep_fewer_activations(llama) == 0  # already changed: applying twice changes nothing more


def test_lora_adapters_train_through_lean_layers() -> None:
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama")
    keep_fewer_activations(model)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    ids = torch.randint(3, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids).logits.sum().backward()
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    assert adapters and all(p.grad is not None for p in adapters)
