"""The trainer's losses equal plain torch references computed from full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import HISTORY, embedded_tokenizer, example, tiny_model

from rqa.data import IGNORE_INDEX, ExampleEncoder, PaddingCollator
from rqa.plugins import get_plugins
from rqa.trainer import RqaTrainer


def batch_for(supervise: str) -> dict:
    tokenizer = embedded_tokenizer()
    formatter = get_plugins()["formatters"].create("chatml", {}, tokenizer=tokenizer)
    encoder = ExampleEncoder(tokenizer, formatter, supervise=supervise)
    items = [encoder.encode(example()), encoder.encode(example(history=HISTORY)), encoder.encode(example("Q?"))]
    return PaddingCollator(tokenizer.pad_token_id)(items)


def reference(model, batch, smoothing: float = 0.0) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=smoothing,
    )


def trainer_loss(model, batch, loss_name: str, tmp_path, **options) -> torch.Tensor:
    from transformers import TrainingArguments

    loss = get_plugins()["losses"].create(loss_name, options)
    trainer = RqaTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True),
        loss=loss,
    )
    inputs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return trainer.compute_loss(model, inputs)


@pytest.mark.parametrize(
    ("loss_name", "supervise", "options", "smoothing"),
    [
        ("answer-ce", "answer", {}, 0.0),
        ("sequence-ce", "sequence", {}, 0.0),
        ("label-smoothed-ce", "answer", {"smoothing": "0.2"}, 0.2),
    ],
)
def test_loss_matches_torch_reference(loss_name, supervise, options, smoothing, tmp_path) -> None:
    model = tiny_model(embedded_tokenizer())
    batch = batch_for(supervise)
    expected = reference(model, batch, smoothing)
    actual = trainer_loss(model, batch, loss_name, tmp_path, **options)
    assert torch.allclose(actual, expected, atol=1e-5), (actual, expected)


def test_sequence_loss_ignores_padding_and_answer_loss_ignores_prompt() -> None:
    answer = batch_for("answer")
    sequence = batch_for("sequence")
    padding = sequence["attention_mask"] == 0
    assert padding.any() and (sequence["labels"][padding] == IGNORE_INDEX).all()
    assert (answer["labels"] != IGNORE_INDEX).sum() < (sequence["labels"] != IGNORE_INDEX).sum() / 4


def test_lm_head_is_applied_only_at_supervised_positions(tmp_path) -> None:
    model = tiny_model(embedded_tokenizer())
    head = model.lm_head
    seen: list[int] = []
    head.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    batch = batch_for("answer")
    from transformers import TrainingArguments

    trainer = RqaTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True),
        loss=get_plugins()["losses"].create("answer-ce"),
    )
    trainer.compute_loss(model, dict(batch))
    assert seen == [int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())]


def test_packed_batch_gives_the_same_loss_as_the_padded_batch(tmp_path) -> None:
    from rqa.data import PackingCollator

    tokenizer = embedded_tokenizer()
    formatter = get_plugins()["formatters"].create("chatml", {}, tokenizer=tokenizer)
    encoder = ExampleEncoder(tokenizer, formatter)
    items = [encoder.encode(example()), encoder.encode(example(history=HISTORY)), encoder.encode(example("Q?"))]
    model = tiny_model(tokenizer)
    padded = trainer_loss(model, PaddingCollator(tokenizer.pad_token_id)(items), "answer-ce", tmp_path)
    packed_batch = PackingCollator()(items)
    assert packed_batch["input_ids"].shape == (1, sum(len(i["input_ids"]) for i in items))
    packed = trainer_loss(model, packed_batch, "answer-ce", tmp_path)
    assert torch.allclose(packed, padded, atol=1e-5), (packed, padded)
    # without restarting positions the examples would see each other, and the loss would differ
    leaky = {k: v for k, v in packed_batch.items() if k != "position_ids"}
    assert not torch.allclose(trainer_loss(model, leaky, "answer-ce", tmp_path), padded, atol=1e-4)


def test_one_example_per_forward_accumulated_gives_the_whole_batchs_update(tmp_path) -> None:
    """``--per_device_train_batch_size 1 --gradient_accumulation_steps N``: the same step as one batch of N.

    The loss is normalised by the answer tokens of the whole accumulated batch, not averaged per pass (the
    examples' answers differ in length, so a mean of means would move the weights differently).
    """
    from transformers import TrainingArguments

    from rqa.data import PackingCollator

    tokenizer = embedded_tokenizer()
    formatter = get_plugins()["formatters"].create("chatml", {}, tokenizer=tokenizer)
    encoder = ExampleEncoder(tokenizer, formatter)
    answers = ("Yes.", "Descale every four weeks in hard-water areas.", "Use the app, then hold the button for five s.")
    items = [encoder.encode(example(answer=answer)) for answer in answers]  # answers of different lengths

    def weights_after_one_step(batch_size: int, accumulation: int) -> dict[str, torch.Tensor]:
        model = tiny_model(tokenizer)
        args = TrainingArguments(
            output_dir=str(tmp_path / f"run-{batch_size}"),
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            optim="sgd",
            learning_rate=0.5,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,  # no clipping: it would hide a gradient that is only scaled differently
            save_strategy="no",
            report_to="none",
            use_cpu=True,
        )
        loss = get_plugins()["losses"].create("answer-ce")
        RqaTrainer(model=model, args=args, train_dataset=items, data_collator=PackingCollator(), loss=loss).train()
        return {name: value.detach().clone() for name, value in model.state_dict().items()}

    before = {name: value.detach().clone() for name, value in tiny_model(tokenizer).state_dict().items()}
    whole, accumulated = weights_after_one_step(3, 1), weights_after_one_step(1, 3)
    assert any(not torch.equal(whole[name], before[name]) for name in whole)
    for name, value in whole.items():
        assert torch.allclose(accumulated[name], value, atol=1e-6), name


def test_bf16_mixed_precision_reaches_the_backbone_and_head(tmp_path) -> None:
    """Mixed precision reaches the backbone and the LM head: the autocast that ``--bf16`` asks for."""
    from transformers import TrainingArguments

    model = tiny_model(embedded_tokenizer())
    backbone, head = model.model, model.lm_head
    dtypes: set[torch.dtype] = set()
    first_projection = next(m for m in backbone.modules() if isinstance(m, torch.nn.Linear))
    for module in (first_projection, head):
        module.register_forward_hook(lambda module, args, output: dtypes.add(output.dtype))
    trainer = RqaTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=True),
        loss=get_plugins()["losses"].create("answer-ce"),
    )
    loss = trainer.compute_loss(trainer.model, dict(batch_for("answer")))
    assert dtypes == {torch.bfloat16}
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_data_parallel_token_counts_do_not_break_the_loss(tmp_path) -> None:
    """Under DataParallel, Trainer hands ``num_items`` as an ``(n_gpu, 1)`` tensor of per-replica shares; rqa's one
    loss over every replica's logits needs the step's whole count instead."""
    from transformers import TrainingArguments

    from rqa.data import PackingCollator

    model = tiny_model(embedded_tokenizer())
    trainer = RqaTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True),
        loss=get_plugins()["losses"].create("answer-ce"),
    )
    trainer.args._n_gpu = 2  # what TrainingArguments records on a machine with two GPUs in one process
    batch = batch_for("answer")
    supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    per_replica = torch.tensor(supervised // 2).unsqueeze(0).expand(2, -1)
    alone = trainer.compute_loss(model, dict(batch))
    assert torch.allclose(trainer.compute_loss(model, dict(batch), num_items_in_batch=per_replica), alone)
    packed = PackingCollator()([{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}])
    batches, num_items = trainer.get_batch_samples(iter([batch, packed]), 2, torch.device("cpu"))
    assert len(batches) == 2 and num_items == supervised + 2


def test_logits_scaled_after_the_head_reach_the_loss(tmp_path) -> None:
    """Granite divides its logits by ``logits_scaling`` after the LM head: the trainer's loss must too."""
    from transformers import TrainingArguments

    model = tiny_model(embedded_tokenizer(), family="granite", logits_scaling=16.0)
    batch = batch_for("answer")
    expected = model(**{k: v for k, v in batch.items()}).loss
    trainer = RqaTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True),
        loss=get_plugins()["losses"].create("answer-ce"),
    )
    assert torch.allclose(trainer.compute_loss(model, dict(batch)), expected, atol=1e-5)
