"""Formatters render the expected text, and training and generation see identical prompt ids."""

from __future__ import annotations

import pytest
from helpers import HISTORY, embedded_tokenizer, example

from rqa.builtin.formatters import prefixes
from rqa.data import IGNORE_INDEX, ExampleEncoder
from rqa.formatting import LAYOUTS, LOCALRQA_HEADER, ChatTemplateFormatter, LayoutFormatter
from rqa.plugins import get_plugins

PRESETS = sorted(get_plugins()["formatters"].names())


def build(name: str, **options):
    return get_plugins()["formatters"].create(name, options, tokenizer=embedded_tokenizer())


def test_every_builtin_preset_is_registered() -> None:
    assert set(LAYOUTS) | {"chat-template", "prefixes", "auto"} <= set(PRESETS)


@pytest.mark.parametrize("history", [(), HISTORY], ids=["single-turn", "with-history"])
@pytest.mark.parametrize("name", ["chatml", "chat-template", "auto"])
def test_chatml_matches_the_tokenizers_own_template(name: str, history) -> None:
    tokenizer = embedded_tokenizer()
    formatter = build(name)
    item = example(history=history)
    messages = [{"role": "system", "content": formatter.system_text(item.gold_docs)}]
    messages += [{"role": r, "content": c} for r, c in history]
    messages.append({"role": "user", "content": item.question})
    expected_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": item.gold_answer}], tokenize=False
    )
    rendered = formatter.render(item, item.gold_docs)
    assert formatter.render(item, item.gold_docs, with_answer=False).prompt == expected_prompt
    assert rendered.prompt == expected_prompt
    assert rendered.answer == f"{item.gold_answer}<|im_end|>"
    assert full.startswith(rendered.text)  # the template only adds a newline after the end of turn


def test_mistral_renders_inst_blocks_with_system_in_first_turn() -> None:
    item = example(history=HISTORY)
    formatter = build("mistral")
    system = formatter.system_text(item.gold_docs)
    assert formatter.render(item, item.gold_docs).text == (
        f"<s>[INST] {system}\n\nMy kettle shows E3. [/INST]"
        "E3 means the base is not seated; lift and reseat it.</s>"
        f"[INST] {item.question} [/INST]{item.gold_answer}</s>"
    )


def test_openchat_and_vicuna_layouts() -> None:
    item = example()
    openchat, vicuna = build("openchat"), build("vicuna")
    system = openchat.system_text(item.gold_docs)
    assert openchat.render(item, item.gold_docs).text == (
        f"<s>{system}<|end_of_turn|>GPT4 Correct User: {item.question}<|end_of_turn|>"
        f"GPT4 Correct Assistant: {item.gold_answer}<|end_of_turn|>"
    )
    assert vicuna.render(item, item.gold_docs).text == (
        f"<s>{system} USER: {item.question} ASSISTANT: {item.gold_answer}</s>"
    )


def test_llama3_and_zephyr_end_every_turn() -> None:
    item = example()
    llama3 = build("llama3").render(item, item.gold_docs)
    assert llama3.text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert llama3.prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert llama3.answer == f"{item.gold_answer}<|eot_id|>"
    zephyr = build("zephyr").render(item, item.gold_docs)
    assert zephyr.prompt.endswith(f"<|user|>\n{item.question}</s>\n<|assistant|>\n")
    assert zephyr.answer == f"{item.gold_answer}</s>"


def test_prefixes_render_localrqa_strings_exactly() -> None:
    """LocalRQA: '{prefix}: {message}' then sep_user / sep_sys after each turn, after its context header."""
    item = example(history=HISTORY, passages=("First passage.", "Second passage."))
    formatter = prefixes(None, user_prefix="<s>[INST]", assistant_prefix="[/INST]", sep_user=" ", sep_sys="</s>")
    documents = "\n".join(d.fmt_content for d in item.gold_docs)
    expected = (
        LOCALRQA_HEADER.format(documents=documents)
        + "<s>[INST]: My kettle shows E3. "
        + "[/INST]: E3 means the base is not seated; lift and reseat it.</s>"
        + f"<s>[INST]: {item.question} [/INST]: {item.gold_answer}</s>"
    )
    assert formatter.render(item, item.gold_docs).text == expected
    default = prefixes(None).render(example(), example().gold_docs)
    assert default.text.endswith(f"USER: {example().question} ASSISTANT: {example().gold_answer}</s>")


def test_prefixes_writes_bos_only_when_the_tokenizer_would() -> None:
    # SmolLM2's tokenizer adds no BOS, so LocalRQA's text starts directly with the header
    assert not prefixes(embedded_tokenizer()).render(example(), []).text.startswith("<|im_start|>")


def test_chat_template_without_system_role_merges_system_into_first_user_turn() -> None:
    tokenizer = embedded_tokenizer()
    formatter = ChatTemplateFormatter(tokenizer)
    formatter._system_role = False
    rendered = formatter.render(example(), example().gold_docs)
    assert f"<|im_start|>user\n{formatter.system_text(example().gold_docs)}\n\n" in rendered.text


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("history", [(), HISTORY], ids=["single-turn", "with-history"])
def test_training_prompt_ids_equal_generation_prompt_ids(name: str, history) -> None:
    tokenizer = embedded_tokenizer()
    formatter = build(name)
    encoder = ExampleEncoder(tokenizer, formatter, max_seq_length=4096)
    item = example(history=history)
    encoded = encoder.encode(item)
    generation_ids = encoder.prompt_ids(item, item.gold_docs)
    first_label = next(i for i, label in enumerate(encoded["labels"]) if label != IGNORE_INDEX)
    assert encoded["input_ids"][:first_label] == generation_ids
    answer_ids = encoded["input_ids"][first_label:]
    assert tokenizer.decode(answer_ids).strip().startswith(item.gold_answer)
    assert tokenizer.decode(answer_ids).endswith(formatter.end_of_turn)


def test_layout_formatter_names_match_registry() -> None:
    assert isinstance(build("chatml"), LayoutFormatter)
    assert build("chatml").end_of_turn == "<|im_end|>"
