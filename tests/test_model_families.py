"""Conformance: rqa trains every decoder-only family exactly as the model's own forward would.

rqa computes logits only at supervised positions and packs a batch into one row. For each causal-LM family of
the installed transformers, a tiny random model (``model_families``) checks in fp32 that rqa's answer-only loss
and gradients equal those of ``model(input_ids, labels=...)`` run on each example alone: for padded batches and
for the batches rqa really trains on (packed where packing keeps examples apart, padded where it pads instead),
also with the lean activations rqa trains with (``rqa.lean_activations``).
One example is longer than every sliding window and attention chunk of the tiny config.
"""

from __future__ import annotations

import logging

import pytest
import torch
from model_families import WINDOW, causal_lm_families, not_decoder_only, tiny_model

from rqa.builtin.losses import CrossEntropyLoss
from rqa.data import IGNORE_INDEX, PackingCollator, PaddingCollator
from rqa.lean_activations import keep_fewer_activations
from rqa.packing import choose_collator
from rqa.trainer import supervised_logits

# families whose handling the conformance suite must prove (they transform logits after the head, or window)
REQUIRED = (
    "granite",
    "granitemoe",
    "granitemoeshared",
    "granitemoehybrid",
    "minicpm3",
    "falcon_h1",
    "hyperclovax",
    "mistral",
    "gemma2",
    "gemma3_text",
    "qwen2",
    "cohere",
    "llama",
)
LENGTHS = (WINDOW + 9, 9, WINDOW + 4)  # the first example outruns any window of the tiny configs


def examples(vocabulary: int) -> list[dict[str, list[int]]]:
    """Random token rows whose last ~40 % is the supervised answer."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for length in LENGTHS:
        ids = torch.randint(3, vocabulary, (length,), generator=generator).tolist()
        prompt = length - max(2, length * 2 // 5)
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def reference(model: torch.nn.Module, rows: list[dict[str, list[int]]]) -> tuple[float, dict[str, torch.Tensor]]:
    """The model's own loss over all answer tokens: each example alone through ``forward(labels=...)``."""
    model.zero_grad()
    counts = [sum(label != IGNORE_INDEX for label in row["labels"][1:]) for row in rows]
    total = 0.0
    for row, count in zip(rows, counts, strict=True):
        loss = model(
            input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]), use_cache=False
        ).loss
        (loss * count / sum(counts)).backward()
        total += float(loss.detach()) * count / sum(counts)
    return total, gradients(model)


def rqa_loss(model: torch.nn.Module, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    """What ``RqaTrainer.compute_loss`` computes for one batch, with its gradients."""
    model.zero_grad()
    batch = dict(batch)
    targets = batch.pop("labels")[:, 1:]
    mask = targets != IGNORE_INDEX
    loss = CrossEntropyLoss("answer")(supervised_logits(model, batch, mask), targets[mask])
    loss.backward()
    return float(loss), gradients(model)


def assert_same(actual: tuple[float, dict], expected: tuple[float, dict], what: str) -> None:
    assert actual[0] == pytest.approx(expected[0], rel=1e-4, abs=1e-5), f"{what}: loss"
    assert actual[1].keys() == expected[1].keys(), f"{what}: parameters with gradients"
    for name, grad in expected[1].items():
        torch.testing.assert_close(actual[1][name], grad, rtol=1e-3, atol=1e-5, msg=f"{what}: gradient of {name}")


@pytest.mark.parametrize("model_type", causal_lm_families())
def test_rqa_loss_and_gradients_equal_the_models_own(model_type: str, caplog: pytest.LogCaptureFixture) -> None:
    reason = not_decoder_only(model_type)
    if reason:
        pytest.skip(reason)
    try:
        model = tiny_model(model_type)
    except Exception as error:
        if model_type in REQUIRED:
            raise
        pytest.skip(f"does not build from a tiny config: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
    model.eval()  # no dropout: the comparisons are exact
    rows = examples(model.get_input_embeddings().num_embeddings)
    expected = reference(model, rows)
    assert_same(rqa_loss(model, PaddingCollator(0)(rows)), expected, "padded batch")
    with caplog.at_level(logging.INFO, logger="rqa"):
        collator = choose_collator("auto", model, 0)
    assert_same(rqa_loss(model, collator(rows)), expected, f"{type(collator).__name__} batch")
    if isinstance(collator, PaddingCollator):
        said = [r.getMessage() for r in caplog.records if "padded batches instead" in r.getMessage()]
        assert len(said) <= 1
    else:
        assert isinstance(collator, PackingCollator)
    keep_fewer_activations(model)  # as rqa trains it by default: the same loss and gradients
    assert_same(rqa_loss(model, collator(rows)), expected, f"{type(collator).__name__} batch, lean activations")
