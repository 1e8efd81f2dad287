"""Batched generation: similar-length batches, and the same greedy answers as one prompt at a time."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import embedded_tokenizer, tiny_model

from rqa.decoding import cache_keyword, can_assemble_cache, prefilled_cache
from rqa.generation import answer_text, generate_answers, left_padded, length_batches, stop_token_ids


def test_batches_hold_every_prompt_once_longest_first() -> None:
    lengths = [5, 90, 40, 100, 95, 41, 38, 6]
    batches = length_batches(lengths, batch_size=3)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert all(len(batch) <= 3 for batch in batches)
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(lengths, reverse=True)


def test_a_batch_closes_before_padding_dominates() -> None:
    lengths = [1000, 100, 98, 97]
    assert length_batches(lengths, batch_size=8, max_padding=0.15) == [[0], [1, 2, 3]]
    assert length_batches(lengths, batch_size=8, max_padding=1.0) == [[0, 1, 2, 3]]


def one_at_a_time(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, end_of_turn: str = "<|im_end|>"
) -> list[str]:
    eos_ids, _ = stop_token_ids(tokenizer, end_of_turn)
    answers = []
    for ids in prompts:
        with torch.inference_mode():
            output = model.generate(
                input_ids=torch.tensor([ids]),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
        text = tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True)
        answers.append(text.split(end_of_turn)[0].strip())
    return answers


@pytest.mark.parametrize("linear_kernels", ["default", "onednn"])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batched_greedy_answers_equal_one_prompt_at_a_time(batch_size: int, linear_kernels: str, monkeypatch) -> None:
    monkeypatch.setenv("RQA_CPU_LINEAR", linear_kernels)  # the loop keeps the default kernels either way
    tokenizer = embedded_tokenizer()
    model = tiny_model(tokenizer, seed=3)
    texts = ["Kettle descaling steps", "Why does the kettle click off early when the water is cold?", "Hi", "a " * 40]
    prompts = [tokenizer(text)["input_ids"] for text in texts]
    expected = one_at_a_time(model, tokenizer, prompts, max_new_tokens=12)
    answers, seconds = generate_answers(model, tokenizer, prompts, "<|im_end|>", 12, batch_size)
    assert answers == expected
    assert len(seconds) == len(prompts) and all(s > 0 for s in seconds)
    assert any(answers)  # the random model does say something


def test_a_lone_prompt_drafts_from_its_own_text_in_fewer_passes_with_the_same_answer() -> None:
    tokenizer = embedded_tokenizer()
    model = tiny_model(tokenizer, seed=3)
    prompts = [tokenizer("the kettle " * 30)["input_ids"]]
    passes: list[int] = []
    hook = model.register_forward_pre_hook(lambda *_: passes.append(1))
    plain, _ = generate_answers(model, tokenizer, prompts, "<|im_end|>", 40, 1, prompt_lookup=0)
    plain_passes = len(passes)
    passes.clear()
    drafted, _ = generate_answers(model, tokenizer, prompts, "<|im_end|>", 40, 1, prompt_lookup=10)
    hook.remove()
    assert drafted == plain == one_at_a_time(model, tokenizer, prompts, max_new_tokens=40)
    assert len(passes) < plain_passes  # the random model repeats itself: drafts were accepted


def test_rows_whose_answer_ended_leave_the_batch_and_the_others_continue_unchanged(monkeypatch) -> None:
    import rqa.decoding as decoding

    monkeypatch.setattr(decoding, "DECODE_SEGMENT", 3)
    kept = []
    kept_rows = decoding.kept_rows
    monkeypatch.setattr(decoding, "kept_rows", lambda *args: kept.append(list(args[2])) or kept_rows(*args))
    tokenizer = embedded_tokenizer()
    model = tiny_model(tokenizer, seed=3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger random weights: varied answers instead of one repeated token
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    texts = [
        "How do I descale the kettle?",
        "Why does my kettle click off early?",
        "Can I boil milk in the kettle?",
        "Where is the water filter located?",
        "How long does the warranty last?",
    ]
    prompts = [tokenizer(text)["input_ids"] for text in texts]
    with torch.inference_mode():
        free = [
            model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids) :] for ids in prompts
        ]
    # an "end of turn" that one answer says in its second segment and no other answer says at all
    candidates = [
        int(row[position])
        for index, row in enumerate(free)
        for position in (3, 4, 5)
        if int(row[position]) not in row[:position].tolist()
        and all(int(row[position]) not in other.tolist() for other in free[:index] + free[index + 1 :])
        and tokenizer(tokenizer.decode([int(row[position])]), add_special_tokens=False)["input_ids"]
        == [int(row[position])]
    ]
    assert candidates, "no token ends exactly one answer early"
    end_of_turn = tokenizer.decode([candidates[0]])
    expected = one_at_a_time(model, tokenizer, prompts, 12, end_of_turn)
    heard: dict[int, list[list[int]]] = {}
    answers, _ = generate_answers(
        model, tokenizer, prompts, end_of_turn, 12, 8, on_tokens=lambda i, ids: heard.setdefault(i, []).append(ids)
    )
    assert answers == expected
    assert [len(rows) for rows in kept] == [4], "one row should have left a batch of five, four continuing"
    # a listener hears every answer grow one token per step, across segments and after rows leave the batch
    assert sorted(heard) == list(range(len(prompts)))
    for index, calls in heard.items():
        assert [len(ids) for ids in calls] == list(range(1, len(calls) + 1))
        assert all(later[: len(earlier)] == earlier for earlier, later in itertools.pairwise(calls))
        assert answer_text(tokenizer, calls[-1], end_of_turn) == answers[index]


def test_an_assembled_cache_continues_every_prompt_as_if_it_ran_alone() -> None:
    """The last prompt token's logits over the assembled, left-padded cache equal each prompt's own forward."""
    tokenizer = embedded_tokenizer()
    model = tiny_model(tokenizer, seed=5).eval()
    texts = ["Kettle descaling steps", "Why does the kettle click off early when the water is cold?", "Hi", "a b " * 9]
    prompts = [tokenizer(text)["input_ids"] for text in texts]
    assert can_assemble_cache(model)
    input_ids, attention = left_padded(prompts, tokenizer.pad_token_id)
    longest = input_ids.shape[1]
    with torch.no_grad():
        cache = prefilled_cache(model, prompts, max_new_tokens=4)
        logits = model(
            input_ids=input_ids[:, -1:],
            attention_mask=attention,
            position_ids=attention.sum(-1, keepdim=True) - 1,
            cache_position=torch.tensor([longest - 1]),
            **{cache_keyword(): cache},
        ).logits[:, -1]
        for row, ids in enumerate(prompts):
            alone = model(input_ids=torch.tensor([ids])).logits[0, -1]
            assert torch.allclose(logits[row], alone, atol=1e-5), texts[row]


def test_sliding_window_models_keep_the_padded_path() -> None:
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=8,
    )  # fmt: skip
    assert not can_assemble_cache(MistralForCausalLM(config))
