"""Prompt beginnings computed once per generation: what is reused, what is kept, and that answers do not change."""

from __future__ import annotations

import torch
from helpers import embedded_tokenizer, tiny_model
from test_generation import one_at_a_time

from rqa.decoding import prefilled_cache
from rqa.generation import generate_answers
from rqa.shared_prefixes import SharedPrefixes, common_length


def layers_of(ids: list[int], layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Stand-in keys and values whose every position holds its token id, so a reused slice shows its origin."""
    cached = torch.tensor(ids[:-1], dtype=torch.float32).view(1, 1, -1, 1)
    return [(cached.clone(), -cached.clone()) for _ in range(layers)]


def test_common_length_counts_the_shared_beginning() -> None:
    assert common_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_length([1, 2], [1, 2, 3]) == 2
    assert common_length([], [1]) == 0


def test_a_prompt_starts_from_the_longest_beginning_computed_before_it() -> None:
    instruction, passage_a, passage_b = list(range(100, 140)), list(range(200, 250)), list(range(300, 340))
    first = instruction + passage_a + [1, 2, 3]
    second = instruction + passage_a + [4, 5, 6]  # same first passage: shares 90 tokens with the first
    third = instruction + passage_b + [7, 8]  # shares only the instruction with both
    prefixes = SharedPrefixes([first, second, third], minimum=16)
    assert prefixes.start(first) == (0, None)  # nothing computed yet
    prefixes.computed(first, layers_of(first))
    reused, layers = prefixes.start(second)
    assert reused == 90
    assert layers is not None and layers[0][0].flatten().tolist() == first[:90]
    assert layers[1][1].flatten().tolist() == [-token for token in first[:90]]
    prefixes.computed(second, layers_of(second))
    reused, layers = prefixes.start(third)
    assert reused == 40 and layers is not None and layers[0][0].flatten().tolist() == instruction


def test_a_beginning_is_dropped_once_every_prompt_sharing_it_is_computed() -> None:
    instruction = list(range(100, 140))
    group_a = [instruction + list(range(200, 250)) + [token] for token in (1, 2)]
    group_b = [instruction + list(range(300, 350)) + [token] for token in (3, 4)]
    prefixes = SharedPrefixes([*group_a, *group_b], minimum=16)
    for prompt in group_a:
        prefixes.start(prompt)
        prefixes.computed(prompt, layers_of(prompt))
    assert prefixes.start(group_b[0])[0] == 40  # group a's passage is gone, the shared instruction stays
    assert prefixes._stored == {}
    prefixes.computed(group_b[0], layers_of(group_b[0]))
    assert prefixes.start(group_b[1])[0] == 90


def test_a_repeated_prompt_computes_nothing_again() -> None:
    prompt = list(range(100, 160))
    prefixes = SharedPrefixes([prompt, prompt], minimum=16)
    prefixes.computed(prompt, layers_of(prompt))
    assert prefixes.start(prompt)[0] == len(prompt) - 1  # everything the cache holds (all but the last token)


def test_short_common_beginnings_are_computed_again() -> None:
    prefixes = SharedPrefixes([[1, 2, 3, 4, 5], [1, 2, 3, 9, 9]], minimum=16)
    prefixes.computed([1, 2, 3, 4, 5], layers_of([1, 2, 3, 4, 5]))
    assert prefixes.start([1, 2, 3, 9, 9]) == (0, None)


def rag_prompts(tokenizer) -> list[list[int]]:
    instruction = "You answer questions about kettles from the passages below. " * 3
    passages = {
        "descale": "Passage: descale the kettle monthly with citric acid, rinse twice and boil fresh water. " * 3,
        "click": "Passage: the kettle clicks off when the thermostat reads boiling or the base is dry. " * 3,
    }
    questions = ["How do I descale it?", "How often?", "Why does it click off?", "Is a dry base a problem?"]
    chosen = ["descale", "descale", "click", "click"]
    pairs = zip(chosen, questions, strict=True)
    return [tokenizer(instruction + passages[name] + question)["input_ids"] for name, question in pairs]


def test_prompts_beginning_alike_are_computed_once_with_the_same_cache() -> None:
    tokenizer = embedded_tokenizer()
    model = tiny_model(tokenizer, seed=7).eval()
    prompts = rag_prompts(tokenizer)
    processed: list[int] = []

    def count_tokens(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        processed.append(kwargs["input_ids"].shape[1])

    hook = model.register_forward_pre_hook(count_tokens, with_kwargs=True)
    with torch.no_grad():
        alone = prefilled_cache(model, prompts, max_new_tokens=4)
        alone_tokens = sum(processed)
        processed.clear()
        shared = prefilled_cache(model, prompts, max_new_tokens=4, prefixes=SharedPrefixes(prompts))
    hook.remove()
    assert alone_tokens == sum(len(ids) - 1 for ids in prompts)
    assert sum(processed) < alone_tokens * 0.6  # each passage and the instruction once
    for first, second in zip(alone.layers, shared.layers, strict=True):
        assert torch.allclose(first.keys, second.keys, atol=1e-5)
        assert torch.allclose(first.values, second.values, atol=1e-5)


def test_answers_from_shared_beginnings_equal_one_prompt_at_a_time() -> None:
    tokenizer = embedded_tokenizer()
    model = tiny_model(tokenizer, seed=7)
    prompts = rag_prompts(tokenizer)
    expected = one_at_a_time(model, tokenizer, prompts, max_new_tokens=12)
    answers, _ = generate_answers(model, tokenizer, prompts, "<|im_end|>", 12, batch_size=2)
    assert answers == expected
    assert any(answers)
