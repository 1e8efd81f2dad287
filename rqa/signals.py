"""Stop cleanly on SIGTERM or Ctrl-C: finish the current step, save a checkpoint, then stop.

Schedulers send SIGTERM before they kill a job; the work done since the last checkpoint is kept. A second
Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
from typing import Any

from transformers import TrainerCallback


class StopOnSignal(TrainerCallback):
    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals to the host application
                return

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
