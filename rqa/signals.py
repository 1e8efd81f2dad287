"""Stop cleanly on SIGTERM or Ctrl-C: finish the current step, save a checkpoint, then stop.

Schedulers send SIGTERM before they kill a job (Kubernetes and Slurm about 30 s later); the work done since the
last checkpoint is kept. An end-to-end evaluation takes minutes, longer than that grace period, so it is abandoned
instead of finished: it looks at the flag before every prompt, decode segment, batch and retrieval chunk, and at
every decode step. An evaluation due on the step where the signal arrived is skipped. A second Ctrl-C interrupts
at once.

Under several processes every rank must stop at the same point, or one would wait forever in a collective call
that the others never make: ``StopFlag.agreed`` asks every rank, at points that all ranks reach in the same order.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers import TrainerCallback


class StopRequested(Exception):
    """Work abandoned because the run was asked to stop; nothing it would have written was written."""

    def __init__(self, received: str | None) -> None:
        super().__init__(f"stopped by {received or 'request'}")
        self.received = received


class StopFlag:
    """Whether the run was asked to stop: ``received`` holds the signal's name once one arrived."""

    def __init__(self) -> None:
        self.received: str | None = None

    def requested(self) -> bool:
        """This process was asked to stop (cheap and local: checked at every decode step)."""
        return self.received is not None

    def agreed(self, device: Any = None) -> bool:
        """Whether any process was asked to stop; every process learns the signal's name.

        Under several processes this is a collective call: every rank must make it at the same points, with a
        tensor on ``device`` (the one the process group communicates from: the model's or the Trainer's).
        """
        received = self.received
        world = _world_size()
        if world > 1:
            import torch
            import torch.distributed as dist

            number = signal.Signals[received].value if received else 0
            flag = torch.tensor([number], dtype=torch.long, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if int(flag.item()) and received is None:
                self.received = received = signal.Signals(int(flag.item())).name
        return received is not None

    def check(self, synced: bool = False, device: Any = None) -> None:
        """Raise ``StopRequested`` when a stop was asked for: here alone, or on any rank when ``synced``."""
        if self.agreed(device) if synced else self.requested():
            raise StopRequested(self.received)


def _world_size() -> int:
    try:
        import torch.distributed as dist
    except ImportError:
        return 1
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class StopOnSignal(StopFlag, TrainerCallback):
    """The Trainer callback: signal handlers while training, a checkpoint and a stop at the step's end."""

    def __init__(self) -> None:
        super().__init__()
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def install(self) -> bool:
        """Handle SIGTERM and Ctrl-C here; False where this is not the main thread (the host application's)."""
        if self._previous:
            return False  # already handling them
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals to the host application
                return False
        return True

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @contextmanager
    def installed(self) -> Iterator[StopOnSignal]:
        """Handle the signals for the duration of a block, e.g. the test predictions after training."""
        mine = self.install()
        try:
            yield self
        finally:
            if mine:
                self.restore()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.install()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.agreed(args.device):  # every rank stops at the same step
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False  # an evaluation takes longer than schedulers wait after SIGTERM
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.agreed(args.device):  # an epoch's evaluation is skipped too, on every rank alike
            control.should_evaluate = False
        return control

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """The Trainer's own evaluation loss is abandoned like the end-to-end evaluation (``RqaTrainer.evaluate``)."""
        if self.agreed(args.device):
            raise StopRequested(self.received)
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.restore()
