"""``rqa train`` flags: LocalRQA's command lines parse unchanged; --config files; dry runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rqa.config import parse_train_args
from rqa.errors import RqaError
from rqa.training import plan_training

ROOT = Path(__file__).resolve().parents[1]
RQA = str(Path(sys.executable).parent / "rqa")

# LocalRQA's documented SFT command for Mistral-7B-Instruct (paths adapted, DeepSpeed left out)
LOCALRQA_MISTRAL = """
--use_flash_attention true --per_device_train_batch_size 4 --per_device_eval_batch_size 4
--learning_rate 5e-6 --num_train_epochs 2 --gradient_accumulation_steps 2 --bf16 false
--model_name_or_path mistralai/Mistral-7B-Instruct-v0.2 --assistant_prefix [/INST] --user_prefix <s>[INST]
--sep_user SPACE --sep_sys </s> --eval_embedding_model intfloat/e5-base-v2 --logging_steps 10
--eval_steps 30 --save_steps 30 --output_dir model_checkpoints/databricks_exp --run_group databricks
--train_file example/train_w_qa.jsonl --eval_file example/eval_w_qa.jsonl --test_file example/test_w_qa.jsonl
--full_dataset_file_path example/documents.jsonl --full_dataset_index_path example/index --max_seq_length 2048
"""


def localrqa_argv() -> list[str]:
    return [" " if token == "SPACE" else token for token in LOCALRQA_MISTRAL.split()]


def test_localrqa_mistral_command_parses_into_the_same_settings() -> None:
    args = parse_train_args(localrqa_argv())
    assert args.model_name_or_path == "mistralai/Mistral-7B-Instruct-v0.2"
    assert args.use_flash_attention is True and args.bf16 is False
    assert (args.user_prefix, args.assistant_prefix, args.sep_user, args.sep_sys) == (
        "<s>[INST]",
        "[/INST]",
        " ",
        "</s>",
    )
    assert args.learning_rate == 5e-6 and args.num_train_epochs == 2 and args.gradient_accumulation_steps == 2
    assert args.per_device_train_batch_size == 4 and args.eval_steps == 30 and args.save_steps == 30
    assert args.eval_embedding_model == "intfloat/e5-base-v2" and args.max_seq_length == 2048
    assert args.run_group == "databricks" and args.full_dataset_index_path == "example/index"
    # prefix flags without --formatter select LocalRQA's prefix format, with those prefixes
    assert args.resolved_formatter() == "prefixes"
    plan = plan_training(args)
    assert plan.formatter.name == "prefixes"
    assert plan.formatter.options == {
        "user_prefix": "<s>[INST]",
        "assistant_prefix": "[/INST]",
        "sep_user": " ",
        "sep_sys": "</s>",
    }
    rendered = plan.formatter.build(tokenizer=None).render(plan.train[0], plan.train[0].gold_docs)
    assert rendered.prompt.endswith(f"<s>[INST]: {plan.train[0].question} [/INST]:")


def test_dash_and_underscore_spellings_and_defaults() -> None:
    args = parse_train_args(["--train-file", "a.jsonl", "--per-device-train-batch-size", "2", "--top_k", "3"])
    assert args.train_file == "a.jsonl" and args.per_device_train_batch_size == 2 and args.top_k == 3
    assert args.report_to == [] and args.lr_scheduler_type == "cosine" and args.warmup_steps == 0.1
    assert args.resolved_formatter() == "auto" and args.loss == "answer-ce"
    assert parse_train_args(["--warmup_ratio", "0.05"]).warmup_steps == 0.05


def test_config_file_supplies_defaults_the_command_line_overrides(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("train_file: t.jsonl\nlearning_rate: 1.0e-4\nmetrics: [retrieval, rouge]\ntop-k: 2\n")
    args = parse_train_args(["--config", str(config), "--learning_rate", "2e-4"])
    assert args.train_file == "t.jsonl" and args.learning_rate == 2e-4
    assert args.metrics == ["retrieval", "rouge"] and args.top_k == 2
    json_config = tmp_path / "run.json"
    json_config.write_text('{"train_file": "j.jsonl", "num_train_epochs": 3}')
    assert parse_train_args(["--config", str(json_config)]).num_train_epochs == 3


@pytest.mark.parametrize("command", ["train", "train-retriever"])
def test_a_repeated_option_flag_keeps_every_value(command: str, tmp_path: Path) -> None:
    from rqa.retriever_config import parse_retriever_args

    parse = parse_train_args if command == "train" else parse_retriever_args
    repeated = ["--loss_option", "a=1", "--loss_option", "b=2", "c=3"]
    assert parse(repeated).loss_option == ["a=1", "b=2", "c=3"]
    config = tmp_path / "run.yaml"
    config.write_text("loss_option: [a=0, d=4]\n")  # the flag adds to the file's; a later key=value wins
    assert parse(["--config", str(config), *repeated]).loss_option == ["a=0", "d=4", "a=1", "b=2", "c=3"]
    assert parse(["--config", str(config)]).loss_option == ["a=0", "d=4"]
    if command == "train":
        flags = ["--formatter_option", "x=1", "--formatter_option", "y=2", "--retriever_option", "k=1"]
        args = parse(flags)
        assert args.formatter_option == ["x=1", "y=2"] and args.retriever_option == ["k=1"]


def test_the_bf16_weights_flag_warns_where_bf16_is_emulated(monkeypatch, caplog) -> None:
    import platform

    import torch

    from rqa.models import warn_if_bf16_is_emulated

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    warn_if_bf16_is_emulated(parse_train_args(["--use_cpu", "true", "--bf16_weights", "true"]))
    assert "--bf16_weights true on a CPU without bf16 instructions" in caplog.text


def test_unknown_config_keys_are_named_with_a_suggestion(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("train_file: t.jsonl\nlearning_rat: 1\n")
    with pytest.raises(RqaError, match="unknown flags 'learning_rat' \\(did you mean 'learning_rate'\\?\\)"):
        parse_train_args(["--config", str(config)])


def test_plan_reports_every_problem_at_once() -> None:
    args = parse_train_args(
        ["--train_file", "example/missing.jsonl", "--formatter", "chatmll", "--loss", "label-smoothed-ce:smoothing=x",
         "--metrics", "rouge", "blue"]
    )  # fmt: skip
    with pytest.raises(RqaError) as caught:
        plan_training(args)
    message = str(caught.value)
    assert "Did you mean 'chatml'?" in message
    assert "option 'smoothing': expected float, got 'x'" in message
    assert "unknown metric 'blue'. Did you mean 'bleu'?" in message
    assert "missing.jsonl: cannot be read" in message


def test_dry_run_checks_without_loading_a_model() -> None:
    result = subprocess.run(
        [RQA, "train", "--config", "example/config.yaml", "--dry_run", "true"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "configuration OK: 44 train, 10 eval, 10 test examples" in " ".join(result.stdout.split())
    bad = subprocess.run(
        [RQA, "train", "--train_file", "example/train_w_qa.jsonl", "--retriever", "nope", "--dry_run", "true"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1 and "unknown retriever 'nope'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "bf16", "warned"),
    [
        (False, False, "true", True),
        (True, False, "true", False),
        (False, True, "true", False),
        (False, False, "false", False),
    ],
)
def test_bf16_on_a_cpu_that_emulates_it_is_flagged(monkeypatch, caplog, avx512_bf16, amx, bf16, warned) -> None:
    import platform

    import torch

    from rqa.models import warn_if_bf16_is_emulated

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    warn_if_bf16_is_emulated(parse_train_args(["--use_cpu", "true", "--bf16", bf16]))
    assert ("bf16 matrix products are emulated" in caplog.text) is warned


@pytest.mark.parametrize(
    ("flags", "accelerator", "pinned"),
    [
        ([], False, False),  # a CPU: PyTorch cannot pin and would warn for every DataLoader
        ([], True, True),  # a GPU: pinned batches copy faster
        (["--use_cpu", "true"], True, False),
        (["--dataloader_pin_memory", "true"], False, True),  # an explicit choice stands
        (["--dataloader_pin_memory", "false"], True, False),
        (["--dataloader_pin_memory"], False, True),  # Hugging Face's spellings still parse
        (["--no_dataloader_pin_memory"], True, False),
        (["--no-dataloader-pin-memory"], True, False),
    ],
)
def test_pin_memory_follows_the_device_unless_chosen(monkeypatch, flags, accelerator, pinned) -> None:
    import rqa.config

    monkeypatch.setattr(rqa.config, "_has_accelerator", lambda mps=False: accelerator)
    assert parse_train_args(flags).dataloader_pin_memory is pinned


@pytest.mark.parametrize("parse", ["train", "train-retriever"])
def test_bf16_without_an_accelerator_means_the_cpus_bf16(monkeypatch, parse) -> None:
    """Hugging Face's Trainer refuses --bf16 without a GPU unless --use_cpu is given too; rqa gives it."""
    import rqa.config
    from rqa.retriever_config import parse_retriever_args

    monkeypatch.setattr(rqa.config, "_has_accelerator", lambda mps=False: False)
    parser = parse_train_args if parse == "train" else parse_retriever_args
    args = parser(["--bf16", "true"])
    assert args.bf16 and args.use_cpu
    assert not parser([]).use_cpu  # fp32 leaves the device to the Trainer


def test_pin_memory_choice_in_a_config_file_stands(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("dataloader_pin_memory: true\n")
    assert parse_train_args(["--config", str(config)]).dataloader_pin_memory is True


def test_max_test_questions_parses_and_must_be_positive() -> None:
    assert parse_train_args([]).max_test_questions is None
    assert parse_train_args(["--max-test-questions", "3"]).max_test_questions == 3
    with pytest.raises(RqaError, match="--max_test_questions must be at least 1, got 0"):
        parse_train_args(["--max_test_questions", "0"])


def test_example_config_writes_no_periodic_checkpoints() -> None:
    """Each checkpoint of the example's 135M model with AdamW's state is about 1.6 GB: `make run` keeps none."""
    args = parse_train_args(["--config", str(ROOT / "example" / "config.yaml")])
    assert args.save_strategy == "no" and args.eval_strategy == "steps" and args.eval_steps == 11


CLOSED = {
    "padding_free": ("auto", "true", "false"),
    "train_context": ("gold", "raft"),
    "raft_source": ("hard-negatives", "retriever"),
}


def test_help_lists_the_values_of_every_closed_option() -> None:
    from rqa.config import make_parser

    text = " ".join(make_parser().format_help().split())
    for name, values in CLOSED.items():
        assert f"--{name} {{{','.join(values)}}}" in text


@pytest.mark.parametrize(("name", "values"), CLOSED.items())
def test_closed_options_accept_their_values_and_refuse_others_in_one_line(name: str, values: tuple, tmp_path) -> None:
    for value in values:
        assert getattr(parse_train_args([f"--{name}", value]), name) == value
    with pytest.raises(
        RqaError, match=f"^rqa train: argument --{name}/--{name.replace('_', '-')}: invalid choice: 'nope'"
    ):
        parse_train_args([f"--{name}", "nope"])
    config = tmp_path / "run.yaml"
    config.write_text(f"{name}: nope\n")  # the parser never sees a config file's values as flags
    with pytest.raises(RqaError, match=f"^--{name} must be one of {', '.join(values)}, got 'nope'$"):
        parse_train_args(["--config", str(config)])


def test_a_yaml_boolean_is_a_padding_free_value(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("padding_free: false\n")
    assert parse_train_args(["--config", str(config)]).padding_free == "false"
