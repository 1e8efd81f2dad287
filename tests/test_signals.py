"""SIGTERM stops a run within the grace period schedulers give (Kubernetes and Slurm kill about 30 s later), even
in the middle of an end-to-end evaluation that would take minutes: the evaluation is abandoned, the checkpoint
saved, and the run resumes from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import embedded_tokenizer, example_index, tiny_model

from rqa.signals import StopFlag, StopOnSignal, StopRequested

ROOT = Path(__file__).resolve().parents[1]
RQA = str(Path(sys.executable).parent / "rqa")
EXAMPLE = ROOT / "example"
GRACE = 30  # seconds between SIGTERM and SIGKILL under Kubernetes and Slurm
QUESTIONS = 40  # each answered with up to 512 new tokens, one at a time: minutes of evaluation


def test_a_second_ctrl_c_interrupts_at_once() -> None:
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs in the background (nohup … &)
    stop = StopOnSignal()
    with stop.installed():
        signal.raise_signal(signal.SIGINT)
        assert stop.received == "SIGINT" and stop.requested()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are given back


def test_an_evaluation_due_at_the_step_the_signal_arrived_is_skipped() -> None:
    from transformers import TrainerControl

    stop = StopOnSignal()
    control = TrainerControl(should_evaluate=True)
    args = SimpleNamespace(device=torch.device("cpu"))
    assert stop.on_step_end(args, None, control).should_evaluate  # no signal: the evaluation runs
    stop.received = "SIGTERM"
    control = stop.on_step_end(args, None, control)
    assert control.should_save and control.should_training_stop and not control.should_evaluate


def stop_after_forwards(model: Any, count: int) -> tuple[StopFlag, list[int]]:
    """A stop flag raised during the ``count``-th forward call, and the running count of forward calls."""
    stop, calls = StopFlag(), [0]

    def hook(*args: Any) -> None:
        calls[0] += 1
        if calls[0] == count:
            stop.received = "SIGTERM"

    model.register_forward_hook(hook)
    return stop, calls


@pytest.mark.parametrize("stop_at", [2, 7])  # while prompts are processed, while the batch decodes
def test_generation_stops_at_the_next_forward(stop_at: int) -> None:
    from rqa.generation import generate_answers

    tokenizer = embedded_tokenizer()
    model = tiny_model(tokenizer, seed=1)
    prompts = [tokenizer(f"Question {i}: how do I descale the kettle?")["input_ids"] for i in range(4)]
    stop, calls = stop_after_forwards(model, stop_at)
    with pytest.raises(StopRequested):
        generate_answers(model, tokenizer, prompts, "<|im_end|>", max_new_tokens=64, batch_size=4, stop=stop)
    assert calls[0] <= stop_at + 1  # at most the decode step that was under way


def test_an_abandoned_evaluation_writes_nothing(tmp_path: Path) -> None:
    from rqa.data import ExampleEncoder
    from rqa.evaluation import E2EEvaluator
    from rqa.formatting import LAYOUTS, LayoutFormatter
    from rqa.schema import read_examples

    tokenizer = embedded_tokenizer()
    model = tiny_model(tokenizer, seed=1)
    encoder = ExampleEncoder(tokenizer, LayoutFormatter("chatml", LAYOUTS["chatml"]), max_seq_length=512)
    examples = read_examples(str(EXAMPLE / "eval_w_qa.jsonl"))
    evaluator = E2EEvaluator(examples, encoder, None, {}, max_new_tokens=16, batch_size=2, output_dir=tmp_path)
    stop, _ = stop_after_forwards(model, 12)
    with pytest.raises(StopRequested):
        evaluator.evaluate_model(model, name="step-1", stop=stop)
    assert not list(tmp_path.iterdir())


def many_questions(path: Path, count: int) -> Path:
    """A QA file of ``count`` questions: the example's, numbered."""
    rows = [json.loads(line) for line in (EXAMPLE / "eval_w_qa.jsonl").read_text().splitlines() if line.strip()]
    with path.open("w") as out:
        for number in range(count):
            row = dict(rows[number % len(rows)])
            row["question"] = f"{row['question']} ({number})"
            out.write(json.dumps(row) + "\n")
    return path


class Run:
    """``rqa train`` in the background, its output read as it comes."""

    def __init__(self, command: list[str]) -> None:
        environment = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
        environment.pop("RQA_LOAD_PLUGINS", None)
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def output(self) -> str:
        return " ".join("".join(self.stdout + self.stderr).split())

    def wait_for(self, text: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.process.poll() is None, self.output()[-3000:]
            assert time.monotonic() < deadline, f"'{text}' never appeared: {self.output()[-3000:]}"
            time.sleep(0.1)

    def terminate_and_time(self) -> float:
        """SIGTERM, then the seconds until the process had exited (killed after twice the grace period)."""
        self.process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        try:
            self.process.wait(timeout=2 * GRACE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        elapsed = time.monotonic() - sent
        for reader in self.readers:
            reader.join(timeout=10)
        return elapsed


def train_args(model: Path, output: Path, *extra: str) -> list[str]:
    return [
        RQA, "train",
        "--model_name_or_path", str(model),
        "--train_file", str(EXAMPLE / "train_w_qa.jsonl"),
        "--full_dataset_file_path", str(EXAMPLE / "documents.jsonl"),
        "--full_dataset_index_path", str(example_index()),
        "--output_dir", str(output),
        "--max_steps", "3",
        "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3",
        "--logging_steps", "1",
        "--save_steps", "100",
        "--max_new_tokens", "512",  # the random model rarely ends an answer: minutes of decoding
        "--per_device_eval_batch_size", "1",
        "--eval_on_start", "false",  # the evaluations these tests interrupt come later
        *extra,
    ]  # fmt: skip


def test_sigterm_during_an_evaluation_stops_within_the_grace_period_and_the_run_resumes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "run"
    questions = str(many_questions(tmp_path / "eval.jsonl", QUESTIONS))
    run = Run(train_args(tiny_model_dir, output, "--eval_file", questions, "--eval_steps", "1"))
    run.wait_for(f"evaluation step-1: generating answers to {QUESTIONS} questions")
    time.sleep(1)  # well inside the generation
    elapsed = run.terminate_and_time()
    assert elapsed < GRACE, f"still running {elapsed:.0f} s after SIGTERM"
    assert run.process.returncode == 1, run.output()[-3000:]
    assert "stopped by SIGTERM at step 1" in " ".join("".join(run.stderr).split())
    assert "--resume_from_checkpoint latest" in run.output()
    history = json.loads((output / "checkpoint-1" / "trainer_state.json").read_text())["log_history"]
    assert not any(key.startswith("eval_gen/") for entry in history for key in entry)  # nothing logged as done
    assert not (output / "eval" / "step-1-predictions.jsonl").exists()
    assert not (output / "eval" / "step-1-metrics.json").exists()

    short = ["--max_steps", "2", "--max_eval_questions", "2", "--max_new_tokens", "4"]  # the last flag wins
    command = [*train_args(tiny_model_dir, output, "--eval_file", questions, "--eval_steps", "1"), *short]
    resumed = subprocess.run(
        [*command, "--resume_from_checkpoint", "latest"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert [path.name for path in (output / "eval").glob("*-predictions.jsonl")] == ["step-2-predictions.jsonl"]
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 2  # went on from step 1


def test_sigterm_while_predicting_the_test_file_stops_within_the_grace_period(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "run"
    questions = str(many_questions(tmp_path / "test.jsonl", QUESTIONS))
    run = Run(train_args(tiny_model_dir, output, "--test_file", questions, "--max_steps", "1"))
    run.wait_for(f"evaluation test: generating answers to {QUESTIONS} questions")
    time.sleep(1)
    elapsed = run.terminate_and_time()
    assert elapsed < GRACE, f"still running {elapsed:.0f} s after SIGTERM"
    assert run.process.returncode == 1, run.output()[-3000:]
    assert "stopped by SIGTERM while predicting the test file" in " ".join("".join(run.stderr).split())
    assert (output / "model.safetensors").exists()  # the trained model was saved before
    assert not (output / "test-predictions.jsonl").exists() and not (output / "test-metrics.json").exists()
