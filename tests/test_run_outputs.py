"""What the real ``rqa train`` writes, on a tiny model: limited predictions, no pin_memory warnings on a CPU,
and the example config's checkpoint only when a run is interrupted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from helpers import example_index

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example"
RQA = str(Path(sys.executable).parent / "rqa")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_test_and_eval_question_limits_on_a_cpu_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    result = subprocess.run(
        [
            RQA, "train",
            "--model_name_or_path", str(tiny_model_dir),
            "--train_file", str(EXAMPLE / "train_w_qa.jsonl"),
            "--eval_file", str(EXAMPLE / "eval_w_qa.jsonl"),
            "--test_file", str(EXAMPLE / "test_w_qa.jsonl"),
            "--full_dataset_file_path", str(EXAMPLE / "documents.jsonl"),
            "--full_dataset_index_path", str(example_index()),
            "--output_dir", str(output),
            "--max_steps", "2",
            "--per_device_train_batch_size", "2",
            "--eval_steps", "2",
            "--save_strategy", "no",
            "--max_new_tokens", "2",
            "--max_eval_questions", "2",
            "--max_test_questions", "3",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    test_rows = read_jsonl(output / "test-predictions.jsonl")
    expected = [json.loads(line)["question"] for line in (EXAMPLE / "test_w_qa.jsonl").read_text().splitlines()]
    assert [row["question"] for row in test_rows] == expected[:3]  # the first three, in file order
    assert len(read_jsonl(output / "eval" / "step-2-predictions.jsonl")) == 2
    assert json.loads((output / "rqa_args.json").read_text())["max_test_questions"] == 3
    # the file round-trips through the run's record and names the plugin behind every component, with versions
    from rqa import __version__
    from rqa.runs import read_run

    written = json.loads((output / "rqa_args.json").read_text())
    assert read_run(output).to_json() == written and written["rqa_version"] == __version__
    kinds = {source["kind"] for source in written["resolved_components"] if source["package"] and source["version"]}
    assert kinds == {"formatters", "losses", "retrievers", "metrics"}
    # batches are pinned only where an accelerator takes them: PyTorch's DataLoader has nothing to warn about
    from rqa.config import _has_accelerator

    assert json.loads((output / "rqa_args.json").read_text())["dataloader_pin_memory"] is _has_accelerator()
    assert "pin_memory" not in result.stderr


def test_example_config_checkpoints_only_on_a_stop_and_resumes_from_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``example/config.yaml`` saves no periodic checkpoints (each would be ~12 bytes a parameter); SIGTERM still
    saves a full one, optimizer included, so --resume_from_checkpoint latest continues exactly."""
    output = tmp_path / "run"
    command = [
        RQA, "train",
        "--config", str(EXAMPLE / "config.yaml"),
        "--model_name_or_path", str(tiny_model_dir),
        "--output_dir", str(output),
        "--full_dataset_index_path", "",
        "--eval_file", "",
        "--test_file", "",
        "--per_device_train_batch_size", "1",
        "--num_train_epochs", "50",  # far more steps than the test waits for
        "--logging_steps", "1",
        "--overwrite_output_dir", "false",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "'loss'" in line:  # a step is done
                break
        process.send_signal(signal.SIGTERM)
        output_text = process.stdout.read()
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1 and "--resume_from_checkpoint latest" in output_text, output_text[-3000:]
    (checkpoint,) = output.glob("checkpoint-*")
    assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "rng_state.pth").is_file()

    step = int(checkpoint.name.split("-")[1])
    resumed = subprocess.run(
        [*command, "--max_steps", str(step + 1), "--resume_from_checkpoint", "latest"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == step + 1
    assert [path.name for path in output.glob("checkpoint-*")] == [checkpoint.name]  # none saved on the way
