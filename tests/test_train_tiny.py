"""The real ``rqa train`` on a tiny model: LoRA, attention fallback, several processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import example_index

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXAMPLE = ROOT / "example"


def train_args(model: Path, output: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model_name_or_path", str(model),
        "--train_file", str(EXAMPLE / "train_w_qa.jsonl"),
        "--eval_file", str(EXAMPLE / "eval_w_qa.jsonl"),
        "--test_file", str(EXAMPLE / "test_w_qa.jsonl"),
        "--full_dataset_file_path", str(EXAMPLE / "documents.jsonl"),
        "--full_dataset_index_path", str(example_index()),
        "--output_dir", str(output),
        "--max_steps", "4",
        "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3",
        "--eval_steps", "2",
        "--save_steps", "2",
        "--logging_steps", "1",
        "--max_new_tokens", "4",
        *extra,
    ]  # fmt: skip


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_flash_attention_request_falls_back_to_sdpa_with_a_message(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = run([str(BIN / "rqa"), *train_args(tiny_model_dir, tmp_path / "run", "--use_flash_attention", "true")])
    assert "flash-attention 2 is not available" in result.stdout + result.stderr
    output = " ".join((result.stdout + result.stderr).split())
    assert "using PyTorch SDPA attention instead" in output
    assert "packed into one row; SDPA attends within each example" in output
    assert (tmp_path / "run" / "test-metrics.json").exists()


def test_a_bf16_run_answers_under_autocast_through_every_cpu_kernel(tiny_model_dir: Path, tmp_path: Path) -> None:
    """--bf16 on a CPU: the model generates inside accelerate's autocast wrapper, so rqa's directly called kernels
    (oneDNN linears, forced here; the stored-beginning attention) must step aside for autocast's own."""
    output = tmp_path / "run"
    env = {**os.environ, "RQA_CPU_LINEAR": "onednn"}
    run([str(BIN / "rqa"), *train_args(tiny_model_dir, output, "--bf16", "true")], env=env)
    metrics = json.loads((output / "test-metrics.json").read_text())
    assert metrics["count/questions"] == len(read_jsonl(EXAMPLE / "test_w_qa.jsonl"))
    assert len(read_jsonl(output / "test-predictions.jsonl")) == metrics["count/questions"]


def test_lora_trains_adapters_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    run([str(BIN / "rqa"), *train_args(tiny_model_dir, output, "--lora_r", "4", "--lora_alpha", "8")])
    assert (output / "adapter_config.json").exists() and (output / "adapter_model.safetensors").exists()
    assert json.loads((output / "adapter_config.json").read_text())["r"] == 4
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(output)
    assert model.peft_config["default"].r == 4


LAUNCHERS = {
    "torchrun": ["torchrun", "--nproc_per_node", "2"],
    "accelerate": ["accelerate", "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"],
}  # fmt: skip


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_shard_evaluation_and_write_each_file_once(
    launcher: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "run"
    command = [str(BIN / LAUNCHERS[launcher][0]), *LAUNCHERS[launcher][1:], str(BIN / "rqa")]
    result = run([*command, *train_args(tiny_model_dir, output)])
    assert result.stdout.count("Done. Results:") == 1  # only the main process reports
    for step in (0, 2, 4):  # step 0: the base model, evaluated before training by default
        path = output / "eval" / f"step-{step}-predictions.jsonl"
        questions = [row["question"] for row in read_jsonl(path)]
        assert len(questions) == 10 and len(set(questions)) == 10  # every question once, none twice
    test_rows = read_jsonl(output / "test-predictions.jsonl")
    expected = [json.loads(line)["question"] for line in (EXAMPLE / "test_w_qa.jsonl").read_text().splitlines()]
    assert [row["question"] for row in test_rows] == expected  # gathered back in input order
    state = json.loads((output / "trainer_state.json").read_text())
    assert sum("eval_gen/f1" in entry for entry in state["log_history"]) == 3


def eval_entries(output: Path, step: int) -> list[dict]:
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if entry["step"] == step and "eval_gen/f1" in entry]


def test_the_base_model_is_evaluated_at_step_0_compared_at_the_end_and_not_again_on_resume(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "run"
    result = run([str(BIN / "rqa"), *train_args(tiny_model_dir, output, "--eval_on_start", "true")])
    assert {path.name for path in (output / "eval").glob("step-0-*")} == {
        "step-0-predictions.jsonl",
        "step-0-metrics.json",
    }
    assert len(eval_entries(output, 0)) == 1
    step_0 = json.loads((output / "eval" / "step-0-metrics.json").read_text())
    assert eval_entries(output, 0)[0]["eval_gen/f1"] == step_0["gen/f1"]
    text = " ".join(result.stdout.split())
    assert "eval set, 10 questions: base model (step 0) → fine-tuned (step 4)" in text
    assert text.index("base model (step 0)") < text.index("test metrics") < text.index("What the numbers mean")
    assert "retr/recall@4 share of questions whose every gold passage is among the 4 retrieved" in text
    results = result.stdout[result.stdout.index("Done. Results:") :].splitlines()[1:]
    assert results[0].split()[:2] == ["report", str(output / "report.png")]
    assert (output / "report.png").stat().st_size > 10_000

    # resuming continues from the checkpoint: its step (4) is not evaluated again, nor is step 0
    resumed = run([str(BIN / "rqa"), *train_args(tiny_model_dir, output, "--eval_on_start", "true", "--max_steps",
                                                 "6", "--resume_from_checkpoint", "latest")])  # fmt: skip
    assert len(eval_entries(output, 0)) == 1 and len(eval_entries(output, 4)) == 1 and eval_entries(output, 6)
    assert "base model (step 0) → fine-tuned (step 6)" in " ".join(resumed.stdout.split())


def test_sigterm_while_evaluating_the_base_model_stops_before_training_and_saves_nothing(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import signal
    import time

    rows = [json.loads(line) for line in (EXAMPLE / "eval_w_qa.jsonl").read_text().splitlines() if line.strip()]
    questions = tmp_path / "eval.jsonl"  # 40 questions of up to 512 new tokens each: minutes of evaluation
    questions.write_text("".join(json.dumps({**rows[i % len(rows)], "question": f"q{i}"}) + "\n" for i in range(40)))
    output, log = tmp_path / "run", tmp_path / "output.txt"
    command = [
        str(BIN / "rqa"), *train_args(tiny_model_dir, output, "--eval_on_start", "true", "--eval_file", str(questions),
                                      "--max_new_tokens", "512", "--per_device_eval_batch_size", "1"),
    ]  # fmt: skip
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 240
        while "evaluation step-0: generating answers" not in " ".join(log.read_text().split()):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(1)  # inside the generation
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)  # a guard against a hang, not a timing
        finally:
            process.kill()
    text = " ".join(log.read_text().split())
    assert process.returncode == 1, text[-3000:]
    assert "stopped by SIGTERM while evaluating the base model (step 0), before training" in text
    assert not list(output.glob("checkpoint-*"))  # nothing was trained, so nothing was saved
    assert not (output / "eval" / "step-0-predictions.jsonl").exists()


def test_how_often_a_run_evaluates_does_not_change_what_it_trains(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Evaluating draws from torch's generator (every DataLoader iterator does); the batches of the epochs after it
    must not depend on it: runs from one seed with different --eval_steps train the same model."""
    train = tmp_path / "train.jsonl"
    train.write_text("".join((EXAMPLE / "train_w_qa.jsonl").read_text().splitlines(keepends=True)[:4]))
    losses = {}
    for schedule in (("--eval_strategy", "no", "--eval_on_start", "false"), ("--eval_steps", "1")):
        output = tmp_path / schedule[1]
        command = train_args(tiny_model_dir, output, *schedule, "--train_file", str(train), "--save_strategy", "no")
        run([str(BIN / "rqa"), *command, "--max_steps", "6"])  # 3 epochs of 2 batches
        history = json.loads((output / "trainer_state.json").read_text())["log_history"]
        losses[schedule[1]] = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses["no"]) == 6
    assert losses["1"] == losses["no"]
