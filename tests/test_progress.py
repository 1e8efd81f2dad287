"""Progress of the long waits: a bar with counts, rate and time left on a terminal; one log line anywhere else."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from rqa.progress import draws_bars, is_interactive, log_finished, progress_bars, quiet_progress

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^evaluation step-1: 3 questions answered in \d+\.\d s \(\d+\.\d\d/s\)$")


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """One process, rank 0, whatever the shell says; rqa's log lines reach caplog even after a CLI test."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.setattr(logging.getLogger("rqa"), "propagate", True)
    caplog.set_level(logging.INFO, logger="rqa")


def terminal() -> Console:
    """A fake terminal that keeps what it was sent."""
    return Console(force_terminal=True, file=io.StringIO(), width=150, color_system=None)


def test_a_terminal_bar_shows_counts_rate_and_time_left() -> None:
    now = [100.0]
    console = terminal()
    with progress_bars(console=console, get_time=lambda: now[0]) as bars:
        assert bars.drawn
        advance = bars.add("evaluation step-1: generating answers", 10, "answers")
        bars.refresh()
        before = console.file.getvalue()
        now[0] = 110.0  # three answers in the first ten seconds
        advance(3)
        bars.refresh()
        after = console.file.getvalue()[len(before) :]
        now[0] = 120.0  # ten seconds into the next batch: the time left counts down
        bars.refresh()
        later = console.file.getvalue()[len(before) + len(after) :]

    assert "evaluation step-1: generating answers" in before
    assert " 0/10" in before and "? answers/s" in before and "eta -:--:--" in before
    assert " 3/10" in after and "0.30 answers/s" in after and "eta 0:00:23" in after
    assert "eta 0:00:13" in later


@pytest.mark.parametrize(
    ("console", "options"),
    [
        (Console(file=io.StringIO(), width=150), {}),  # a log file, a pipe: no terminal
        (terminal(), {"quiet": True}),  # --disable_tqdm true
        (terminal(), {"main": False}),  # another rank
    ],
    ids=["not-a-terminal", "quiet", "not-the-main-process"],
)
def test_without_a_bar_only_the_summary_line_appears(
    console: Console, options: dict[str, bool], caplog: pytest.LogCaptureFixture
) -> None:
    with progress_bars(console=console, **options) as bars:
        assert not bars.drawn
        advance = bars.add("evaluation step-11: generating answers", 73, "answers")
        for _ in range(73):
            advance(1)
        bars.refresh()
    log_finished("evaluation step-11", 73, "questions", "answered", 142.3)

    assert console.file.getvalue() == ""
    assert [r.getMessage() for r in caplog.records] == ["evaluation step-11: 73 questions answered in 142.3 s (0.51/s)"]


def test_quiet_progress_and_other_ranks_silence_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert draws_bars(console=terminal())
    with quiet_progress():
        assert not draws_bars(console=terminal())
    with quiet_progress(False):
        assert draws_bars(console=terminal())
    monkeypatch.setenv("RANK", "1")  # a launcher's other process, before torch.distributed starts
    assert not draws_bars(console=terminal())


def test_colour_forced_on_a_pipe_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI sets FORCE_COLOR for colours; its logs are still files, and only TTY_COMPATIBLE=1 asks for redraws."""
    from rich import get_console

    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert get_console().is_terminal  # rich's own view
    assert not is_interactive()  # pytest's captured stdout is no tty
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    assert is_interactive()


def test_embedding_a_database_without_a_terminal_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    import numpy as np

    from rqa.retrieval import DenseFaissRetriever

    retriever = DenseFaissRetriever("dense-faiss", "unused", batch_size=2)
    retriever._encode = lambda texts: np.ones((len(texts), 3), dtype=np.float32)  # chunks of 16
    vectors = retriever.encode([f"document {i}" for i in range(40)], progress=True)

    assert vectors.shape == (40, 3)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith("index: 40 documents embedded in "), messages


def test_every_ranks_questions_are_counted_once() -> None:
    from rqa.evaluation import lockstep_progress
    from rqa.generation import lockstep_batches

    parts = lockstep_batches([50, 40, 30, 20, 10, 5, 1], batch_size=2, world=2, max_padding=1.0)
    counted: list[int] = []
    advance = lockstep_progress(parts, counted.append)
    for batch in parts[0].batches:
        advance(len(batch))

    assert sum(counted) == 7  # the repeat that fills the short share is not a question answered
    assert len(counted) == len(parts[0].batches)


def tiny_evaluator(quiet: bool) -> tuple[Any, Any]:
    from helpers import embedded_tokenizer, tiny_model

    from rqa.data import ExampleEncoder
    from rqa.evaluation import E2EEvaluator
    from rqa.formatting import LAYOUTS, LayoutFormatter
    from rqa.schema import read_examples

    tokenizer = embedded_tokenizer()
    encoder = ExampleEncoder(tokenizer, LayoutFormatter("chatml", LAYOUTS["chatml"]), max_seq_length=512)
    examples = read_examples(str(ROOT / "example" / "eval_w_qa.jsonl"))[:3]
    evaluator = E2EEvaluator(examples, encoder, None, {}, max_new_tokens=4, batch_size=2, quiet=quiet)
    return evaluator, tiny_model(tokenizer, seed=1)


@pytest.fixture(autouse=True)
def _plain_rqa_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run in-process earlier may have given the rqa logger a console handler, or made rich's global
    console under another environment; these tests read stdout."""
    logger = logging.getLogger("rqa")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    import rich

    monkeypatch.setattr(rich, "_console", None)  # rich's global console, made anew under this test's environment


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "drawn"])
def test_an_evaluation_draws_a_bar_unless_quiet_and_logs_one_summary(
    quiet: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # stdout counts as a terminal: only ``quiet`` can hide the bar
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "200")
    evaluator, model = tiny_evaluator(quiet)
    evaluator.evaluate_model(model, name="step-1")

    shown = capsys.readouterr()
    messages = [r.getMessage() for r in caplog.records]
    assert "evaluation step-1: generating answers to 3 questions" in messages
    assert len([m for m in messages if SUMMARY.match(m)]) == 1, messages
    if quiet:
        assert shown.out == "" and shown.err == ""
    else:
        assert "evaluation step-1: generating answers" in shown.out and "3/3" in shown.out
