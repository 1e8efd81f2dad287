"""``rqa render``: an example as the model sees it, and ``--check`` against the tokenizer's chat template."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import HISTORY, embedded_tokenizer, example

from rqa.data import ExampleEncoder
from rqa.formatting import LAYOUTS, LayoutFormatter
from rqa.render import SUPERVISED_STYLE, compare_with_template, highlighted, part_counts

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "example" / "train_w_qa.jsonl"
RQA = str(Path(sys.executable).parent / "rqa")
FIRST = json.loads(TRAIN.read_text().splitlines()[0])


def rqa(*args: str, color: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update({"COLUMNS": "200", **({"FORCE_COLOR": "1", "TERM": "xterm-256color"} if color else {"NO_COLOR": "1"})})
    return subprocess.run([RQA, *args], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def test_render_highlights_the_answer_and_counts_each_part() -> None:
    result = rqa("render", "--train_file", str(TRAIN), "--formatter", "chatml", color=True)
    assert result.returncode == 0, result.stderr[-3000:]
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert FIRST["question"] in plain and "<|im_start|>assistant" in plain
    # the answer's first words come right after the supervised style's escape code (bold black on green)
    first_words = " ".join(FIRST["gold_answer"].split()[:3])
    assert re.search(r"\x1b\[1;30;42m" + re.escape(first_words), result.stdout), result.stdout[-2000:]
    for part in ("system (instruction)", "passages", "history", "question", "answer", "supervised", "total"):
        assert part in plain
    assert "approximate" in plain


def test_check_finds_chatml_identical_and_mistral_different() -> None:
    same = rqa("render", "--train-file", str(TRAIN), "--formatter", "chatml", "--check")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "identical" in same.stdout
    different = rqa("render", "--train_file", str(TRAIN), "--formatter", "mistral", "--row", "1", "--check")
    assert different.returncode == 1, different.stdout + different.stderr
    assert "different" in different.stdout
    assert "first differing character: 1" in different.stdout and "⟦" in different.stdout
    assert "first differing token id: position 0" in different.stdout


def test_unknown_formatter_and_row_out_of_range_are_clear_errors() -> None:
    unknown = rqa("render", "--train_file", str(TRAIN), "--formatter", "chatmk")
    assert unknown.returncode == 1 and "unknown formatter 'chatmk'" in unknown.stderr and "chatml" in unknown.stderr
    far = rqa("render", "--train_file", str(TRAIN), "--row", "999")
    assert far.returncode == 1 and "--row 999 is out of range" in far.stderr


def test_highlight_covers_exactly_the_supervised_tokens() -> None:
    tokenizer = embedded_tokenizer()
    encoder = ExampleEncoder(tokenizer, LayoutFormatter("chatml", LAYOUTS["chatml"]))
    item = example(history=HISTORY)
    encoded = encoder.encode(item)
    text = highlighted(tokenizer, encoded["input_ids"], encoded["labels"])
    styled = [text.plain[span.start : span.end] for span in text.spans if span.style == SUPERVISED_STYLE]
    assert styled == [item.gold_answer + "<|im_end|>"]
    counts = dict(part_counts(tokenizer, encoder.formatter, item, len(encoded["input_ids"])))
    assert counts["history"] > 0 and counts["question"] > 0
    assert sum(counts.values()) == len(encoded["input_ids"])


def test_comparison_with_history_is_identical_for_chatml() -> None:
    tokenizer = embedded_tokenizer()
    encoder = ExampleEncoder(tokenizer, LayoutFormatter("chatml", LAYOUTS["chatml"]))
    comparison = compare_with_template(encoder, example(history=HISTORY))
    assert comparison.identical and comparison.first_text_difference is None
    vicuna = compare_with_template(
        ExampleEncoder(tokenizer, LayoutFormatter("vicuna", LAYOUTS["vicuna"])), example(history=HISTORY)
    )
    assert not vicuna.identical and vicuna.first_text_difference == 1 and vicuna.first_id_difference == 0
