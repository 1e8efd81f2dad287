"""The real ``rqa train`` on a tiny model: LoRA, attention fallback, several processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
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
    for path in (output / "eval" / "step-2-predictions.jsonl", output / "eval" / "step-4-predictions.jsonl"):
        questions = [row["question"] for row in read_jsonl(path)]
        assert len(questions) == 10 and len(set(questions)) == 10  # every question once, none twice
    test_rows = read_jsonl(output / "test-predictions.jsonl")
    expected = [json.loads(line)["question"] for line in (EXAMPLE / "test_w_qa.jsonl").read_text().splitlines()]
    assert [row["question"] for row in test_rows] == expected  # gathered back in input order
    state = json.loads((output / "trainer_state.json").read_text())
    assert sum("eval_gen/f1" in entry for entry in state["log_history"]) == 2
