"""``rqa render``: one training example as the model sees it, or ``--check`` a preset against the template."""

from __future__ import annotations

from typing import Any

import click

from rqa.cli.options import option


@click.command("render")
@option("--train_file", required=True, help="QA file (JSONL) holding the example.")
@option("--formatter", default="auto", show_default=True, help="Formatter name.")
@option("--formatter_option", multiple=True, help="Formatter option KEY=VALUE (repeatable).")
@option("--model", help="Model whose tokenizer is used (weights are not loaded). Default: the embedded generator.")
@option("--row", type=int, default=0, show_default=True, help="Which example: 0 is the file's first.")
@option("--max_seq_length", type=int, default=2048, show_default=True, help="Longest sequence, as in training.")
@option("--supervise_history", is_flag=True, help="Also highlight earlier assistant turns, as training would.")
@option("--check", is_flag=True, help="Compare with the tokenizer's chat template; exit 1 if they differ.")
def render(**kwargs: Any) -> int:
    """Print an example with its supervised tokens highlighted and the tokens each part costs."""
    from rqa.display import make_console, setup_logging
    from rqa.errors import RqaError
    from rqa.pipeline import choose
    from rqa.schema import read_examples

    console = make_console()
    setup_logging(console)
    formatter_choice = choose("formatters", kwargs["formatter"], kwargs["formatter_option"])
    examples = read_examples(kwargs["train_file"])
    row = kwargs["row"]
    if not 0 <= row < len(examples):
        last = len(examples) - 1
        raise RqaError(f"--row {row} is out of range: {kwargs['train_file']} holds rows 0–{last}")
    example = examples[row]

    from rich.text import Text

    from rqa.data import ExampleEncoder
    from rqa.models import load_tokenizer, resolve_generator

    tokenizer = load_tokenizer(resolve_generator(kwargs["model"]))
    formatter = formatter_choice.build(tokenizer=tokenizer)
    encoder = ExampleEncoder(
        tokenizer, formatter, max_seq_length=kwargs["max_seq_length"], supervise_history=kwargs["supervise_history"]
    )
    model_label = kwargs["model"] or "the embedded generator"
    console.rule(Text(f"{example.source} · formatter {formatter_choice.name} · tokenizer of {model_label}"))
    if kwargs["check"]:
        return _check(console, encoder, example, formatter_choice.name)
    _show(console, encoder, example)
    return 0


def _show(console: Any, encoder: Any, example: Any) -> None:
    from rich.table import Table

    from rqa.data import IGNORE_INDEX
    from rqa.errors import RqaError
    from rqa.render import SUPERVISED_STYLE, highlighted, part_counts

    encoded = encoder.encode(example)
    if encoded is None:
        raise RqaError(f"{example.source}: the answer alone does not fit in --max_seq_length {encoder.max_seq_length}")
    input_ids, labels = encoded["input_ids"], encoded["labels"]
    console.print(highlighted(encoder.tokenizer, input_ids, labels), markup=False, highlight=False)
    supervised = sum(label != IGNORE_INDEX for label in labels)
    console.rule()
    console.print(
        f"[{SUPERVISED_STYLE}]highlighted[/]: the {supervised} supervised tokens (the loss is computed there)"
    )
    table = Table(title="tokens per part", title_justify="left")
    table.add_column("part")
    table.add_column("tokens", justify="right")
    for name, count in part_counts(encoder.tokenizer, encoder.formatter, example, len(input_ids)):
        table.add_row(name, str(count))
    table.add_section()
    table.add_row("supervised", str(supervised))
    table.add_row("total", str(len(input_ids)), style="bold")
    console.print(table)
    caption = "Each part is tokenized alone, so its count is approximate; 'format' is the rest of the total."
    if encoded["trimmed"]:
        caption += " Passages or history were trimmed to fit max_seq_length: part counts are before trimming."
    console.print(caption, style="dim", markup=False)


def _check(console: Any, encoder: Any, example: Any, name: str) -> int:
    from rqa.render import compare_with_template, context

    comparison = compare_with_template(encoder, example)
    if comparison.identical:
        console.print(
            f"[bold green]identical[/]: '{name}' renders the tokenizer's chat template exactly "
            f"({len(comparison.preset_ids)} prompt tokens, same text and ids)"
        )
        return 0
    console.print(f"[bold red]different[/]: '{name}' does not match the tokenizer's chat template")
    width = max(len(name), len("template")) + 1
    preset_label, template_label = f"{name}:".ljust(width), "template:".ljust(width)
    at = comparison.first_text_difference
    if at is not None:
        console.print(f"first differing character: {at}", markup=False)
        console.print(f"  {preset_label} {context(comparison.preset_text, at)!r}", markup=False, highlight=False)
        console.print(f"  {template_label} {context(comparison.template_text, at)!r}", markup=False, highlight=False)
    position = comparison.first_id_difference
    if position is not None:
        tokenizer = encoder.tokenizer

        def around(ids: list[int]) -> str:
            return repr(tokenizer.decode(ids[max(0, position - 3) : position + 3], skip_special_tokens=False))

        console.print(
            f"first differing token id: position {position} (preset {len(comparison.preset_ids)} ids, "
            f"template {len(comparison.template_ids)} ids)",
            markup=False,
        )
        console.print(f"  {preset_label} {around(comparison.preset_ids)}", markup=False, highlight=False)
        console.print(f"  {template_label} {around(comparison.template_ids)}", markup=False, highlight=False)
    return 1
