"""Label masking, truncation that never cuts the answer, and padding masked by position."""

from __future__ import annotations

from helpers import HISTORY, embedded_tokenizer, example

from rqa.data import IGNORE_INDEX, ExampleEncoder, PaddingCollator
from rqa.plugins import get_plugins


def encoder(max_seq_length: int = 4096, **kwargs) -> ExampleEncoder:
    tokenizer = embedded_tokenizer()
    formatter = get_plugins()["formatters"].create("chatml", {}, tokenizer=tokenizer)
    return ExampleEncoder(tokenizer, formatter, max_seq_length=max_seq_length, **kwargs)


def supervised_text(item: dict) -> str:
    ids = [t for t, label in zip(item["input_ids"], item["labels"], strict=True) if label != IGNORE_INDEX]
    return embedded_tokenizer().decode(ids)


def test_only_the_answer_and_its_end_of_turn_are_supervised() -> None:
    item = encoder().encode(example(history=HISTORY))
    assert supervised_text(item) == "Descale every four weeks in hard-water areas.<|im_end|>"
    labelled = [label for label in item["labels"] if label != IGNORE_INDEX]
    assert labelled[-1] == embedded_tokenizer().convert_tokens_to_ids("<|im_end|>")
    assert item["labels"][-len(labelled) :] == item["input_ids"][-len(labelled) :]


def test_history_replies_are_supervised_on_request() -> None:
    item = encoder(supervise_history=True).encode(example(history=HISTORY))
    assert supervised_text(item) == (
        "E3 means the base is not seated; lift and reseat it.<|im_end|>"
        "Descale every four weeks in hard-water areas.<|im_end|>"
    )


def test_sequence_supervision_labels_every_token() -> None:
    item = encoder(supervise="sequence").encode(example())
    assert item["labels"] == item["input_ids"]


def test_truncation_trims_passages_and_keeps_the_answer() -> None:
    long_passage = " ".join(f"Sentence {i} about limescale and kettles." for i in range(200))
    item = example(passages=(long_passage,), history=HISTORY)
    full = encoder().encode(item)
    assert len(full["input_ids"]) > 600
    short = encoder(max_seq_length=300).encode(item)
    assert len(short["input_ids"]) <= 300
    assert short["trimmed"] and not full["trimmed"]
    assert supervised_text(short) == supervised_text(full)
    text = embedded_tokenizer().decode(short["input_ids"])
    assert "My kettle shows E3." in text  # passages went first; the history is still there
    assert "Sentence 0 about limescale" in text  # the passage is cut from its end


def test_history_goes_after_passages_are_exhausted_and_hopeless_examples_drop() -> None:
    long_history = (("user", "word " * 150), ("assistant", "reply " * 150), *HISTORY)
    item = example(history=long_history)
    fitted = encoder(max_seq_length=160).encode(item)
    assert fitted is not None and len(fitted["input_ids"]) <= 160
    text = embedded_tokenizer().decode(fitted["input_ids"])
    assert "word word" not in text
    assert supervised_text(fitted).startswith("Descale every four weeks")
    assert encoder(max_seq_length=20).encode(item) is None
    kept, stats = encoder(max_seq_length=20).encode_all([item, item])
    assert kept == [] and stats.dropped == ["test.jsonl:1", "test.jsonl:1"]


def test_collator_masks_padding_by_position_even_when_pad_is_eos() -> None:
    tokenizer = embedded_tokenizer()
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2: pad == <|im_end|>
    items = [encoder().encode(example()), encoder().encode(example(history=HISTORY))]
    batch = PaddingCollator(tokenizer.pad_token_id)(items)
    short = len(items[0]["input_ids"])
    assert batch["input_ids"].shape[1] == len(items[1]["input_ids"])
    assert batch["attention_mask"][0, :short].all() and not batch["attention_mask"][0, short:].any()
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
    # the answer's own end-of-turn token (same id as pad) stays supervised
    assert batch["labels"][0, short - 1].item() == tokenizer.eos_token_id
