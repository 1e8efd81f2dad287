"""Progress bars for the long waits (end-to-end evaluations, test predictions, embedding a database), and their
quiet fallback.

A bar shows what is done out of how much, the rate and the time left: an evaluation takes minutes, and a user at a
terminal wants to know whether to wait or come back later. It is drawn only where someone watches it:

* on a terminal: rich's console must say it is one, and the default console must also write to a real tty (or
  ``TTY_COMPATIBLE=1``), since CI systems set ``FORCE_COLOR`` for colours and a redraw a second would fill their
  logs. A console passed in explicitly is taken at its word;
* when not asked to be quiet: ``quiet=True`` (``rqa train --disable_tqdm true``), or inside ``quiet_progress()``;
* on the main process: with several processes each would redraw over the others. Only rank 0 draws.

Once the work is done the caller logs one INFO line (``log_finished``), bar or not: a Slurm or CI log keeps one line
per evaluation, with its rate, instead of hundreds of redraws, and on a terminal the line stays where the transient
bar was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from rich import get_console
from rich.console import Console
from rich.errors import LiveError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

log = logging.getLogger("rqa")
Advance = Callable[[int], None]  # called with how many items were just done
_quiet: ContextVar[bool] = ContextVar("rqa_quiet_progress", default=False)


@contextlib.contextmanager
def quiet_progress(quiet: bool = True) -> Iterator[None]:
    """No bar inside this block when ``quiet``: for work reached through code that takes no ``quiet`` argument,
    such as the index a training run builds."""
    token = _quiet.set(quiet or _quiet.get())
    try:
        yield
    finally:
        _quiet.reset(token)


def is_main_process() -> bool:
    """Rank 0, or a single process: from ``torch.distributed`` once started, else the launcher's ``RANK``."""
    dist = sys.modules.get("torch.distributed")  # imported by whoever runs several processes; not imported here
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def is_interactive(console: Console | None = None) -> bool:
    """Whether a bar on ``console`` (default: rich's, on stdout) is seen by a person rather than written to a log."""
    if console is not None:
        return console.is_terminal and not console.is_dumb_terminal
    console = get_console()
    if not console.is_terminal or console.is_dumb_terminal:
        return False
    if os.environ.get("TTY_COMPATIBLE") == "1":
        return True
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def draws_bars(quiet: bool = False, main: bool = True, console: Console | None = None) -> bool:
    """Whether a bar is drawn: not quiet, on the main process, on a terminal (see the module's docstring)."""
    return not (quiet or _quiet.get()) and main and is_main_process() and is_interactive(console)


class Bars:
    """Bars on one display; every method is a no-op where nothing is drawn, so callers need no branch."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    @property
    def drawn(self) -> bool:
        return self.progress is not None

    def add(self, description: str, total: int, unit: str = "items") -> Advance:
        """A bar of ``total`` ``unit``; returns the function that moves it on."""
        if self.progress is None:
            return _ignore
        progress = self.progress
        task = progress.add_task(description, total=total, unit=unit, updated=None)

        def advance(count: int) -> None:
            progress.update(task, advance=count, updated=progress.get_time())
            progress.refresh()  # once a batch: the new count shows at once, even when batches are quick

        return advance

    def refresh(self) -> None:
        if self.progress is not None:
            self.progress.refresh()


def _ignore(count: int) -> None:
    """Where nothing is drawn, progress goes nowhere."""


@contextlib.contextmanager
def progress_bars(
    quiet: bool = False,
    main: bool = True,
    console: Console | None = None,
    get_time: Callable[[], float] | None = None,
) -> Iterator[Bars]:
    """A transient display of bars (description, bar, done/total, rate, time left) when ``draws_bars`` says so.

    ``get_time`` replaces the clock (to render known rates and times).
    """
    if not draws_bars(quiet, main, console):
        yield Bars(None)
        return
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeLeftColumn(),
        console=console,
        transient=True,
        refresh_per_second=2,  # the numbers change once a batch; a slow redraw leaves the CPU to the work
        get_time=get_time,
    )
    try:
        progress.start()
    except LiveError:  # another live display holds the console (rich < 14): stay quiet rather than fail
        yield Bars(None)
        return
    try:
        yield Bars(progress)
    finally:
        progress.stop()


def average_rate(task: Task) -> float | None:
    """Items per second from the start to the latest update: work comes in batches, and a rate taken between
    them would sink while a batch runs."""
    updated = task.fields.get("updated")
    if updated is None or task.start_time is None or not task.completed:
        return None
    seconds = updated - task.start_time
    return task.completed / seconds if seconds > 0 else None


class RateColumn(ProgressColumn):
    """Items per second so far, e.g. ``0.51 answers/s``."""

    def render(self, task: Task) -> Text:
        rate = average_rate(task)
        unit = task.fields.get("unit", "items")
        shown = "?" if rate is None else f"{rate:.2f}" if rate < 10 else f"{rate:.0f}"
        return Text(f"{shown} {unit}/s", style="progress.data.speed")


class TimeLeftColumn(ProgressColumn):
    """Time left at the average rate, counting down between updates, e.g. ``eta 0:02:31``."""

    def render(self, task: Task) -> Text:
        rate = average_rate(task)
        if task.finished:
            left: float | None = 0.0
        elif rate is None or task.total is None or task.start_time is None or task.elapsed is None:
            left = None
        else:
            since_update = task.start_time + task.elapsed - task.fields["updated"]
            left = max(0.0, (task.total - task.completed) / rate - since_update)
        if left is None:
            return Text("eta -:--:--", style="progress.remaining")
        minutes, seconds = divmod(int(left + 0.5), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"eta {hours:d}:{minutes:02d}:{seconds:02d}", style="progress.remaining")


def log_finished(label: str, count: int, noun: str, verb: str, seconds: float) -> None:
    """One INFO line when long work ends, e.g. ``evaluation step-11: 73 questions answered in 142.3 s (0.51/s)``."""
    rate = count / seconds if seconds > 0 else 0.0
    log.info("%s: %d %s %s in %.1f s (%.2f/s)", label, count, noun, verb, seconds, rate)
