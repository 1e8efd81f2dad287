"""Crash and resume: ``kill -9`` then ``--resume_from_checkpoint latest`` follows the uninterrupted run;
SIGTERM saves a checkpoint before stopping; an output directory with an earlier run is never mixed into."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RQA = str(Path(sys.executable).parent / "rqa")
EXAMPLE = ROOT / "example"
STEPS = 30


def args(model: Path, output: Path, *extra: str, steps: int = STEPS, save_steps: int = 5) -> list[str]:
    return [
        RQA, "train",
        "--model_name_or_path", str(model),
        "--train_file", str(EXAMPLE / "train_w_qa.jsonl"),
        "--output_dir", str(output),
        "--max_steps", str(steps),
        "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3",
        "--save_steps", str(save_steps),
        "--save_total_limit", "10",
        "--logging_steps", "1",
        "--eval_strategy", "no",
        *extra,
    ]  # fmt: skip


def losses(output: Path) -> dict[int, float]:
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def start_and_wait_for(command: list[str], checkpoint: Path) -> subprocess.Popen:
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not (checkpoint / "trainer_state.json").exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    return process


def finish(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir: Path, tmp_path_factory) -> dict[int, float]:
    output = tmp_path_factory.mktemp("uninterrupted")
    finish(args(tiny_model_dir, output))
    return losses(output)


def test_kill_9_then_resume_matches_an_uninterrupted_run(tiny_model_dir: Path, tmp_path: Path, uninterrupted) -> None:
    output = tmp_path / "run"
    process = start_and_wait_for(args(tiny_model_dir, output), output / "checkpoint-10")
    process.kill()  # SIGKILL: no handler, no cleanup
    process.wait()
    assert not (output / f"checkpoint-{STEPS}").exists()
    with pytest.raises(AssertionError, match="holds an earlier run"):
        finish(args(tiny_model_dir, output))  # never silently restarted on top of a crashed run
    finish(args(tiny_model_dir, output, "--resume_from_checkpoint", "latest"))
    resumed = losses(output)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed == pytest.approx(uninterrupted, rel=1e-4)


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tiny_model_dir: Path, tmp_path: Path, uninterrupted) -> None:
    output = tmp_path / "run"
    process = start_and_wait_for(args(tiny_model_dir, output), output / "checkpoint-5")
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 1, out[-2000:]
    match = re.search(r"stopped by SIGTERM at step (\d+)", " ".join(out.split()))
    assert match, out[-2000:]
    assert (output / f"checkpoint-{match.group(1)}" / "trainer_state.json").exists()  # saved where it stopped
    finish(args(tiny_model_dir, output, "--resume_from_checkpoint", "latest"))
    assert losses(output) == pytest.approx(uninterrupted, rel=1e-4)


def test_overwrite_output_dir_starts_over(tiny_model_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    first = [*args(tiny_model_dir, output)[:-8], "--max_steps", "5", "--save_steps", "5", "--eval_strategy", "no"]
    finish(first)
    assert (output / "checkpoint-5").exists()
    finish(
        [
            *first[:-6],
            "--max_steps",
            "2",
            "--save_steps",
            "2",
            "--eval_strategy",
            "no",
            "--overwrite_output_dir",
            "true",
        ]
    )
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-2"]
