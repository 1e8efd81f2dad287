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
from typing import Any

import pytest
import torch
from model_families import WINDOW, causal_lm_families, not_decoder_only, tiny_model

from rqa import shared_prefixes
from rqa.builtin.losses import CrossEntropyLoss
from rqa.data import IGNORE_INDEX, PackingCollator, PaddingCollator
from rqa.generation import generate_answers
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


def decoder(model_type: str) -> torch.nn.Module:
    """The family's tiny model in eval mode (no dropout: the comparisons are exact), or the test skips saying why."""
    reason = not_decoder_only(model_type)
    if reason:
        pytest.skip(reason)
    try:
        model = tiny_model(model_type)
    except Exception as error:
        if model_type in REQUIRED:
            raise
        pytest.skip(f"does not build from a tiny config: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
    return model.eval()


@pytest.mark.parametrize("model_type", causal_lm_families())
def test_rqa_loss_and_gradients_equal_the_models_own(model_type: str, caplog: pytest.LogCaptureFixture) -> None:
    model = decoder(model_type)
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


def generation_prompts(vocabulary: int) -> list[list[int]]:
    """Four prompts, three beginning alike (two of them for longer), as retrieved passages make evaluation prompts."""
    generator = torch.Generator().manual_seed(2)
    common, passage = (torch.randint(3, vocabulary, (n,), generator=generator).tolist() for n in (6, 5))
    tails = [torch.randint(3, vocabulary, (n,), generator=generator).tolist() for n in (3, 2, 7, 4)]
    return [common + passage + tails[0], common + passage + tails[1], common + tails[2], tails[3]]


def word_tokenizer(vocabulary: int) -> Any:
    """A tokenizer whose token i is the word ``t<i>``: 0 pads, 2 ends a reply."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocabulary)}, unk_token="t1"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=words, pad_token="t0", unk_token="t1", eos_token="t2")


NEW_TOKENS = 5


def greedy_alone(model: torch.nn.Module, ids: list[int]) -> list[int]:
    """The prompt's greedy new tokens from ``generate`` on it alone."""
    settings = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "eos_token_id": [2], "pad_token_id": 0}
    return model.generate(input_ids=torch.tensor([ids]), **settings)[0, len(ids) :].tolist()


def greedy_by_forward(model: torch.nn.Module, ids: list[int]) -> list[int]:
    """The prompt's greedy new tokens from whole forward passes, no cache."""
    sequence = list(ids)
    for _ in range(NEW_TOKENS):
        sequence.append(int(model(input_ids=torch.tensor([sequence])).logits[0, -1].argmax()))
        if sequence[-1] == 2:
            break
    return sequence[len(ids) :]


@pytest.mark.parametrize("model_type", causal_lm_families())
def test_rqa_generation_gives_each_prompt_its_own_greedy_answer(model_type: str, monkeypatch) -> None:
    """rqa's batched generation on a CPU (prompts prefilled alone, common beginnings computed once, one batched
    cache with each row reading its own span, where the family's cache allows; padded batches where it does not)
    against ``generate`` on each prompt alone."""
    monkeypatch.setattr(shared_prefixes, "MIN_SHARED_TOKENS", 4)  # the test's prompts are short
    model = decoder(model_type)
    vocabulary = model.get_input_embeddings().num_embeddings
    tokenizer = word_tokenizer(vocabulary)
    prompts = generation_prompts(vocabulary)
    with torch.inference_mode():
        try:
            alone = [greedy_alone(model, ids) for ids in prompts]
        except Exception as error:
            pytest.skip(f"the family's own generate fails on the tiny config: {type(error).__name__}: {error}"[:200])
        # a family whose own ways of decoding one prompt disagree has no one answer to match
        if [greedy_by_forward(model, ids) for ids in prompts] != alone:
            pytest.skip("the family's generate does not continue its own forward pass (positions of its own)")
    expected = [tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in alone]
    answers, _ = generate_answers(model, tokenizer, prompts, "", NEW_TOKENS, batch_size=4, prompt_lookup=0)
    assert answers == expected
    one_by_one, _ = generate_answers(model, tokenizer, prompts, "", NEW_TOKENS, batch_size=1)  # drafting, if it can
    assert one_by_one == expected
