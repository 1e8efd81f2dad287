"""rqa's packed SDPA: attending within each packed example gives what the block-diagonal mask gives."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from helpers import HISTORY, embedded_tokenizer, example, tiny_model

import rqa.attention as attention
from rqa.attention import PACKED_SDPA, boundary_segments, packed_segments, register_packed_sdpa, varlen_attention
from rqa.data import ExampleEncoder, PackingCollator, PaddingCollator
from rqa.plugins import get_plugins


def encoded_items() -> list[dict]:
    tokenizer = embedded_tokenizer()
    formatter = get_plugins()["formatters"].create("chatml", {}, tokenizer=tokenizer)
    encoder = ExampleEncoder(tokenizer, formatter)
    return [encoder.encode(example()), encoder.encode(example(history=HISTORY)), encoder.encode(example("Q?"))]


@pytest.mark.parametrize(
    ("positions", "expected"),
    [
        ([0, 1, 2, 0, 1, 0], [(0, 3), (3, 5), (5, 6)]),
        ([0, 1, 2, 3], None),  # one example: plain SDPA
        ([3, 4, 0, 1], None),  # a row that does not start an example (a cache continuation)
    ],
)
def test_segments_are_read_from_restarting_positions(positions: list[int], expected) -> None:
    assert packed_segments(torch.tensor([positions]), len(positions)) == expected


def test_segments_need_a_single_row_of_matching_length() -> None:
    assert packed_segments(torch.tensor([[0, 1, 0, 1], [0, 1, 0, 1]]), 4) is None
    assert packed_segments(torch.tensor([[0, 1, 0]]), 4) is None
    assert packed_segments(None, 4) is None


def test_the_collator_passes_the_boundaries_its_positions_imply() -> None:
    items = encoded_items()
    batch = PackingCollator()(items)
    length = batch["input_ids"].shape[1]
    assert boundary_segments(batch["cu_seq_lens_q"], length) == packed_segments(batch["position_ids"], length)
    assert batch["max_length_q"] == max(len(item["input_ids"]) for item in items)
    assert boundary_segments([0, 4], 4) is None  # one example: plain SDPA
    assert boundary_segments([0, 2, 4], 5) is None  # boundaries of another row


def test_a_rounded_up_row_keeps_its_examples_outputs() -> None:
    """Padding a packed row to a multiple adds one unlabelled example; the real ones compute exactly as before."""
    items = encoded_items()
    plain = PackingCollator()(items)
    rounded = PackingCollator(pad_token_id=0, pad_to_multiple_of=64)(items)
    length, padded_length = plain["input_ids"].shape[1], rounded["input_ids"].shape[1]
    assert padded_length % 64 == 0 and 0 < padded_length - length < 64
    assert (rounded["labels"][0, length:] == -100).all() and torch.equal(rounded["labels"][:, :length], plain["labels"])
    assert boundary_segments(rounded["cu_seq_lens_q"], padded_length)[-1] == (length, padded_length)
    model = tiny_model(embedded_tokenizer())
    model.set_attn_implementation(register_packed_sdpa())
    with torch.no_grad():
        expected = model.model(**_inputs(plain)).last_hidden_state
        actual = model.model(**_inputs(rounded)).last_hidden_state[:, :length]
    assert torch.allclose(actual, expected, atol=1e-6)


def test_packed_rows_without_boundaries_are_split_by_their_positions() -> None:
    """Batches from other collators (TRL's padding-free one) carry position ids only."""
    batch = _inputs(PackingCollator()(encoded_items()))
    model = tiny_model(embedded_tokenizer())
    model.set_attn_implementation(register_packed_sdpa())
    positions_only = {k: v for k, v in batch.items() if not k.startswith(("cu_seq_lens", "max_length"))}
    with torch.no_grad():
        expected = model.model(**batch).last_hidden_state
        assert torch.allclose(model.model(**positions_only).last_hidden_state, expected, atol=1e-6)


def reference_varlen(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, **options):
    """Stands in for PyTorch's CUDA-only ``varlen_attn`` on the CPU: causal SDPA within each example."""
    reference_varlen.options = options
    assert options.get("window_size") == (-1, 0) or options.get("is_causal") is True
    assert torch.equal(cu_seq_q, cu_seq_k) and cu_seq_q.dtype == torch.int32
    assert max_q == max_k == int(cu_seq_q.diff().max())
    if not options.get("enable_gqa"):
        assert k.shape[1] == q.shape[1], "this kernel takes as many key heads as query heads"
    ends = cu_seq_q.tolist()
    return torch.cat(
        [
            torch.nn.functional.scaled_dot_product_attention(
                *(t[start:end].transpose(0, 1) for t in (q, k, v)),
                is_causal=True,
                scale=options.get("scale"),
                enable_gqa=bool(options.get("enable_gqa")),
            ).transpose(0, 1)
            for start, end in itertools.pairwise(ends)
        ]
    )


@pytest.mark.parametrize(
    "keywords",
    [
        {"window_size", "scale", "enable_gqa"},  # PyTorch 2.13
        {"is_causal"},  # earlier releases: causal flag, no scale, no grouped heads
    ],
)
def test_varlen_attention_adapts_to_the_kernel_this_pytorch_has(monkeypatch, keywords: set[str]) -> None:
    monkeypatch.setattr(attention, "_varlen_kernel", lambda: (reference_varlen, frozenset(keywords)))
    torch.manual_seed(0)
    query = torch.randn(1, 4, 12, 8)
    key, value = torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 8)  # grouped: two query heads per key head
    boundaries = torch.tensor([0, 5, 9, 12])
    expected = torch.cat(
        [
            torch.nn.functional.scaled_dot_product_attention(
                query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, enable_gqa=True
            ).transpose(1, 2)
            for a, b in itertools.pairwise(boundaries.tolist())
        ],
        dim=1,
    )
    output = varlen_attention(query, key, value, boundaries, 5, scaling=8**-0.5)
    assert output is not None and torch.allclose(output, expected, atol=1e-6)
    custom = varlen_attention(query, key, value, boundaries, 5, scaling=0.1)
    if "scale" in keywords:
        assert reference_varlen.options["scale"] == 0.1 and custom is not None
    else:
        assert custom is None  # the caller loops over the examples instead


def test_the_varlen_kernel_is_only_used_where_it_runs() -> None:
    layer = torch.nn.Linear(2, 2)
    assert not attention.varlen_fits(layer, torch.zeros(1, 2, 3, 8, dtype=torch.bfloat16), 0.0, {})  # CPU tensor


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch's flash-attention kernels need a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16 weights", "bf16 autocast"])
def test_packed_flash_kernel_on_gpu_matches_attending_to_each_example(monkeypatch, precision: str) -> None:
    calls = []
    original = attention.varlen_attention
    monkeypatch.setattr(attention, "varlen_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in PackingCollator()(encoded_items()).items()}
    model = tiny_model(embedded_tokenizer()).cuda()
    if precision == "bf16 weights":
        model.to(torch.bfloat16)
    model.set_attn_implementation(register_packed_sdpa())
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16 autocast"):
        hidden, grads = hidden_and_grads(model, batch)
        assert calls, "the packed row did not reach the flash kernel"
        calls.clear()
        loop_batch = {k: v for k, v in batch.items() if not k.startswith(("cu_seq_lens", "max_length"))}
        loop_hidden, loop_grads = hidden_and_grads(model, loop_batch)
    assert not calls
    assert torch.allclose(hidden.float(), loop_hidden.float(), atol=2e-2)
    for name, grad in grads.items():
        assert torch.allclose(grad.float(), loop_grads[name].float(), atol=2e-2, rtol=2e-2), name


def hidden_and_grads(model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.model(**inputs, use_cache=False).last_hidden_state
    hidden.pow(2).mean().backward()
    return hidden.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_packed_sdpa_matches_masked_sdpa_in_outputs_and_gradients() -> None:
    batch = PackingCollator()(encoded_items())
    model = tiny_model(embedded_tokenizer())
    model.set_attn_implementation("sdpa")
    masked_hidden, masked_grads = hidden_and_grads(model, batch)
    model.set_attn_implementation(register_packed_sdpa())
    hidden, grads = hidden_and_grads(model, batch)
    assert torch.allclose(hidden, masked_hidden, atol=1e-5)
    assert grads.keys() == masked_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, masked_grads[name], atol=1e-5), name


def test_packed_sdpa_attends_within_each_example_only() -> None:
    """The first example's outputs do not change when the second example's tokens do."""
    items = encoded_items()
    model = tiny_model(embedded_tokenizer())
    model.set_attn_implementation(register_packed_sdpa())
    changed = [items[0], {**items[1], "input_ids": [7] * len(items[1]["input_ids"])}]
    first = len(items[0]["input_ids"])
    with torch.no_grad():
        before = model.model(**_inputs(PackingCollator()(items[:2]))).last_hidden_state[0, :first]
        after = model.model(**_inputs(PackingCollator()(changed))).last_hidden_state[0, :first]
    assert torch.allclose(before, after, atol=1e-6)


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"} | {"use_cache": False}


def test_padded_batches_and_generation_still_use_the_padding_mask(tmp_path: Path) -> None:
    tokenizer = embedded_tokenizer()
    items = encoded_items()
    model = tiny_model(tokenizer)
    padded = PaddingCollator(tokenizer.pad_token_id)(items)
    with torch.no_grad():
        expected = model(**_inputs(padded)).logits
        model.set_attn_implementation(register_packed_sdpa())
        actual = model(**_inputs(padded)).logits
    mask = padded["attention_mask"].bool()
    assert torch.allclose(actual[mask], expected[mask], atol=1e-5)

    prompt = torch.tensor([items[0]["input_ids"][:20]])
    generated = model.generate(prompt, max_new_tokens=5, do_sample=False)
    model.set_attn_implementation("sdpa")
    assert torch.equal(generated, model.generate(prompt, max_new_tokens=5, do_sample=False))


def test_a_saved_model_does_not_depend_on_rqa(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = tiny_model(embedded_tokenizer())
    model.set_attn_implementation(register_packed_sdpa())
    model.save_pretrained(tmp_path)
    assert PACKED_SDPA not in (tmp_path / "config.json").read_text()
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation == "sdpa"
