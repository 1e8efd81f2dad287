"""A training run's output directory over time: refusing to mix runs, resuming, saving the finished model.

``rqa train`` and ``rqa train-retriever`` share these rules: an earlier run's checkpoints are continued on request
(``--resume_from_checkpoint latest``), replaced on request (``--overwrite_output_dir true``), never silently mixed;
a run stopped by a signal keeps its checkpoint and says how to continue.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rqa.errors import RqaError


def resume_path(args: Any) -> str | bool | None:
    """``--resume_from_checkpoint`` as the Trainer takes it: None, True (the latest checkpoint) or a folder."""
    value = args.resume_from_checkpoint
    if value in (None, "", "false", "False"):
        return None
    if value in ("latest", "true", "True"):
        return True
    return value


def check_output_dir(args: Any) -> None:
    """An earlier run's checkpoints are continued on request, replaced on request, never silently mixed."""
    from transformers.trainer_utils import get_last_checkpoint

    output_dir = Path(args.output_dir)
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    resume = resume_path(args)
    if resume is True and last is None:
        raise RqaError(f"--resume_from_checkpoint latest: {output_dir} holds no checkpoint-N folder to resume")
    if isinstance(resume, str) and not Path(resume).is_dir():
        raise RqaError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
    if last is not None and resume is None and not args.overwrite_output_dir:
        raise RqaError(
            f"{output_dir} holds an earlier run ({Path(last).name}); pass --resume_from_checkpoint latest "
            "to continue it, or --overwrite_output_dir true to start over"
        )


def clear_for_overwrite(args: Any) -> None:
    """With ``--overwrite_output_dir``, an earlier run's checkpoints and evaluations go before this run writes."""
    if args.overwrite_output_dir and resume_path(args) is None and args.process_index == 0:
        output_dir = Path(args.output_dir)
        for stale in [*output_dir.glob("checkpoint-*"), output_dir / "eval"]:
            shutil.rmtree(stale, ignore_errors=True)


def save_trained(trainer: Any, stop: Any, output_dir: Path) -> dict[str, Path]:
    """After ``trainer.train()`` returned: a stop asked for ends the command (its checkpoint is saved); otherwise
    the model and the training history are saved at the top of ``output_dir``. Returns where they went."""
    if stop.received:
        raise RqaError(
            f"stopped by {stop.received} at step {trainer.state.global_step}; a checkpoint was saved in "
            f"{output_dir}: continue with --resume_from_checkpoint latest"
        )
    trainer.save_model(str(output_dir))
    trainer.save_state()
    return {"model": output_dir, "trainer_state": output_dir / "trainer_state.json"}


def record_test_scores(trainer: Any, scores: dict[str, float], output_dir: Path) -> dict[str, Path]:
    """The test metrics into the training history (``test_`` prefix, as ``report.png`` reads them); their files."""
    trainer.log({f"test_{k}": v for k, v in scores.items()})
    trainer.save_state()
    return {"test_predictions": output_dir / "test-predictions.jsonl", "test_metrics": output_dir / "test-metrics.json"}
