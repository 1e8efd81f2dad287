"""rqa's packed SDPA: attending within each packed example gives what the block-diagonal mask gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import HISTORY, embedded_tokenizer, example, tiny_model

from rqa.attention import PACKED_SDPA, packed_segments, register_packed_sdpa
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
