"""``rqa train`` arguments: LocalRQA's flags, rqa's own, and every Hugging Face ``TrainingArguments`` flag.

One dataclass subclassing ``TrainingArguments`` (as TRL's ``SFTConfig`` does), parsed by
``HfArgumentParser``: the parser LocalRQA's scripts use, so their command lines parse unchanged. Closed options
are ``Literal`` types: ``--help`` lists their values, the parser refuses others, and ``__post_init__`` checks
values that come from a ``--config`` file or from code, which the parser does not see.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml
from transformers import HfArgumentParser, TrainingArguments

from rqa.errors import RqaError

PREFIX_FLAGS = ("user_prefix", "assistant_prefix", "sep_user", "sep_sys")
PaddingFree = Literal["auto", "true", "false"]
BF16_WEIGHTS_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")  # --optim values it stands in for
TrainContext = Literal["gold", "raft"]
RaftSource = Literal["hard-negatives", "retriever"]


@dataclass
class RqaTrainingArguments(TrainingArguments):
    # --- LocalRQA's flags, same names and meaning ---
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Generator: a Hub id or local path. Default: the embedded SmolLM2-135M-Instruct."},
    )
    use_flash_attention: bool = field(
        default=False, metadata={"help": "Use flash-attention 2 with bf16 when available (else SDPA)."}
    )
    user_prefix: str | None = field(default=None, metadata={"help": "LocalRQA user prefix (e.g. 'USER')."})
    assistant_prefix: str | None = field(
        default=None, metadata={"help": "LocalRQA assistant prefix (e.g. 'ASSISTANT')."}
    )
    sep_user: str | None = field(default=None, metadata={"help": "Text after each user turn (LocalRQA)."})
    sep_sys: str | None = field(default=None, metadata={"help": "Text after each assistant turn (LocalRQA)."})
    eval_embedding_model: str | None = field(
        default=None,
        metadata={"help": "Embedding model for end-to-end evaluation. Default: embedded all-MiniLM-L6-v2."},
    )
    train_file: str | None = field(default=None, metadata={"help": "Training QA file (JSONL)."})
    eval_file: str | None = field(default=None, metadata={"help": "Evaluation QA file (JSONL)."})
    test_file: str | None = field(default=None, metadata={"help": "Test QA file, predicted after training."})
    full_dataset_file_path: str | None = field(
        default=None, metadata={"help": "Document database: JSONL, or a LocalRQA .pkl."}
    )
    full_dataset_index_path: str | None = field(
        default=None, metadata={"help": "Index directory for the document database (built on first use)."}
    )
    max_seq_length: int = field(default=2048, metadata={"help": "Longest training sequence, in tokens."})
    run_group: str | None = field(default=None, metadata={"help": "Accepted for LocalRQA compatibility."})
    # --- rqa's own ---
    formatter: str | None = field(
        default=None,
        metadata={
            "help": "Chat formatter name (see `rqa list-plugins`). Default: 'auto' (the tokenizer's chat "
            "template, else LocalRQA prefixes); 'prefixes' when prefix flags are given."
        },
    )
    formatter_option: list[str] = field(
        default_factory=list, metadata={"help": "Formatter option KEY=VALUE (repeatable)."}
    )
    loss: str = field(default="answer-ce", metadata={"help": "Loss name (see `rqa list-plugins`)."})
    loss_option: list[str] = field(default_factory=list, metadata={"help": "Loss option KEY=VALUE (repeatable)."})
    retriever: str = field(default="dense-faiss", metadata={"help": "Retriever for end-to-end evaluation."})
    retriever_option: list[str] = field(
        default_factory=list, metadata={"help": "Retriever option KEY=VALUE (repeatable)."}
    )
    metrics: list[str] = field(
        default_factory=lambda: ["all"],
        metadata={"help": "Metric names for end-to-end evaluation ('all' for every installed metric)."},
    )
    top_k: int = field(default=4, metadata={"help": "Passages retrieved per question."})
    max_new_tokens: int = field(default=128, metadata={"help": "Longest generated answer, in tokens."})
    supervise_history: bool = field(
        default=False, metadata={"help": "Also train on earlier assistant turns of the chat history."}
    )
    padding_free: PaddingFree = field(
        default="auto",
        metadata={
            "help": "Pack each batch into one row without padding: 'true', 'false', or 'auto' (whenever the "
            "attention keeps packed examples apart: a variable-length flash-attention kernel, SDPA attending "
            "within each example, or eager with position-id masks)."
        },
    )
    train_context: TrainContext = field(
        default="gold",
        metadata={
            "help": "Passages shown in training: 'gold' (gold passages only, LocalRQA's SFT) or 'raft' (gold "
            "mixed with distractors, shuffled, sometimes left out)."
        },
    )
    raft_distractors: int = field(default=3, metadata={"help": "Distractor passages per example ('raft')."})
    raft_keep_gold: float = field(
        default=0.8, metadata={"help": "Share of 'raft' examples that keep their gold passage."}
    )
    raft_source: RaftSource = field(
        default="hard-negatives",
        metadata={"help": "Where distractors come from: 'hard-negatives' (the records') or 'retriever'."},
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains every weight."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "Modules LoRA adapts."}
    )
    bf16_weights: bool = field(
        default=False,
        metadata={
            "help": "Keep the weights, gradients and AdamW state in bf16 instead of fp32 (about half the memory) "
            "and add each update with Kahan summation (torch-optimi's AdamW), so that updates smaller than bf16 "
            "can hold still add up; on a CPU, freed memory also goes back to the system after every forward/backward "
            "pass (a few percent of the speed). Fast where bf16 is: a GPU, or a CPU with avx512_bf16 or AMX."
        },
    )
    lean_activations: bool = field(
        default=True,
        metadata={
            "help": "Recompute the elementwise parts of Llama-style RMSNorm and SwiGLU layers in the backward pass "
            "instead of keeping them: less memory per token, same results (other layers are left as they are)."
        },
    )
    e2e_eval: bool = field(
        default=True, metadata={"help": "Run the end-to-end evaluation (retrieve, generate, score)."}
    )
    max_eval_questions: int | None = field(
        default=None, metadata={"help": "Evaluate on the first N eval questions only (quick checks)."}
    )
    eval_on_start: bool | None = field(
        default=None,
        metadata={
            "help": "Evaluate the base model before the first training step (step 0: eval/step-0-*, the baseline "
            "of the final table and report.png). Default: yes whenever the run evaluates end to end while it "
            "trains (an eval file, --e2e_eval true, --eval_strategy not 'no'); a resumed run never repeats it."
        },
    )
    max_test_questions: int | None = field(
        default=None, metadata={"help": "Predict the first N test questions only (quick checks)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start over in an output directory that holds an earlier run."}
    )
    dry_run: bool = field(default=False, metadata={"help": "Validate everything, load no model, exit."})
    config: str | None = field(default=None, metadata={"help": "YAML or JSON file holding any of these flags."})

    # Defaults suited to the job (TrainingArguments' own are for generic training).
    output_dir: str | None = field(default="runs/rqa", metadata={"help": "Where the model and results go."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up steps, or a share of all steps when below 1."})
    warmup_ratio: float | None = field(
        default=None, metadata={"help": "Older name for a warm-up share (sets --warmup_steps)."}
    )
    evaluation_strategy: str | None = field(
        default=None, metadata={"help": "Older name of --eval_strategy, accepted for older scripts."}
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate."})
    train_sampling_strategy: str = field(
        default="group_by_length", metadata={"help": "Batch similar lengths together: less padding."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep rqa's columns."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate: no, steps or epoch."})
    eval_steps: float | None = field(default=100, metadata={"help": "Evaluate every N steps."})
    save_steps: float = field(default=100, metadata={"help": "Save a checkpoint every N steps."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    dataloader_pin_memory: bool | None = field(
        default=None,
        metadata={
            "help": "Pin batches in page-locked memory for faster copies to the GPU. Default: on when training "
            "on a CUDA or XPU device, off on a CPU (where PyTorch would only warn that it cannot pin)."
        },
    )

    def __post_init__(self) -> None:
        if self.warmup_ratio is not None:
            self.warmup_steps = self.warmup_ratio
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        settle_devices(self)
        settle_progress(self)
        if self.max_test_questions is not None and self.max_test_questions < 1:
            raise ValueError(f"--max_test_questions must be at least 1, got {self.max_test_questions}")
        if isinstance(self.padding_free, bool):  # YAML reads `padding_free: true` as a boolean
            self.padding_free = "true" if self.padding_free else "false"
        check_choices(self)
        if self.bf16_weights and self.optim not in BF16_WEIGHTS_OPTIMIZERS:
            raise ValueError(
                f"--bf16_weights trains with torch-optimi's AdamW (Kahan-summed updates); --optim {self.optim} "
                "cannot update bf16 weights without losing small updates: leave --optim out"
            )
        super().__post_init__()

    def resolved_formatter(self) -> str:
        if self.formatter:
            return self.formatter
        return "prefixes" if any(getattr(self, f) is not None for f in PREFIX_FLAGS) else "auto"

    def prefix_options(self) -> dict[str, str]:
        return {f: getattr(self, f) for f in PREFIX_FLAGS if getattr(self, f) is not None}


def check_choices(arguments: Any) -> None:
    """Every ``Literal`` field of the ``arguments`` dataclass holds one of its values (else a ``ValueError``)."""
    for name, allowed in closed_options(type(arguments)).items():
        value = getattr(arguments, name)
        if value not in allowed:
            raise ValueError(f"--{name} must be one of {', '.join(map(str, allowed))}, got '{value}'")


@functools.cache
def closed_options(arguments_class: type) -> dict[str, tuple[Any, ...]]:
    """The fields of ``arguments_class`` typed as a ``Literal``, with their values."""
    hints = typing.get_type_hints(arguments_class)
    return {
        item.name: typing.get_args(hints[item.name])
        for item in fields(arguments_class)
        if typing.get_origin(hints[item.name]) is Literal
    }


def settle_devices(args: Any) -> None:
    """Device choices that depend on this machine, for ``rqa train`` and ``rqa train-retriever`` alike.

    Several processes on a machine without an accelerator train on the CPU over gloo, which accelerate sets up only
    when asked for the CPU; ``--bf16 true`` there means the CPU's bf16 (the Trainer would refuse it as "no GPU"
    unless told the CPU is meant); batches are pinned only where they are copied to an accelerator (on a CPU,
    PyTorch would only warn that it cannot pin).
    """
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not args.use_cpu and (several or args.bf16 or args.bf16_full_eval) and not _has_accelerator(mps=True):
        args.use_cpu = True
    if args.dataloader_pin_memory is None:
        args.dataloader_pin_memory = not args.use_cpu and _has_accelerator()


def settle_progress(args: Any) -> None:
    """The Trainer's own progress bars follow rqa's rule (``rqa.progress``): drawn on a terminal, left out of logs,
    where a redraw per step would fill the file; the logged numbers are printed either way."""
    if args.disable_tqdm is None:
        from rqa.progress import is_interactive

        args.disable_tqdm = not is_interactive()


def _has_accelerator(mps: bool = False) -> bool:
    import torch

    if mps and torch.backends.mps.is_available():
        return True
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def _load_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise RqaError(f"config file {path}: {error.strerror}") from None
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise RqaError(f"config file {path} is not valid {file.suffix.lstrip('.') or 'YAML'}: {error}") from None
    if not isinstance(data, dict):
        raise RqaError(f"config file {path} must hold a mapping of flag names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def make_parser() -> HfArgumentParser:
    parser = HfArgumentParser(RqaTrainingArguments, prog="rqa train")
    _keep_pin_memory_spellings(parser)
    repeatable_options(parser)
    return parser


class _AddToList(argparse.Action):
    """Each use of the flag adds its values to the earlier ones (a ``--config`` file's included)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        earlier = getattr(namespace, self.dest, None) or []
        setattr(namespace, self.dest, [*([earlier] if isinstance(earlier, str) else earlier), *values])


def repeatable_options(parser: HfArgumentParser) -> None:
    """``--loss_option a=1 --loss_option b=2`` keeps both, as every other rqa command does.

    ``HfArgumentParser`` gives a list field ``nargs="+"`` with argparse's store action, so a repeated flag would
    silently keep only its last values: a component option dropped without a word.
    """
    for action in parser._actions:
        if action.dest.endswith("_option") and action.nargs == "+":
            action.__class__ = _AddToList


def _keep_pin_memory_spellings(parser: HfArgumentParser) -> None:
    """Hugging Face's bare ``--dataloader_pin_memory`` and ``--no_dataloader_pin_memory`` keep working.

    The parser gives those spellings only to booleans that default to True; here the default is None (decided by
    the device), and scripts written for ``TrainingArguments`` must still parse.
    """
    for action in parser._actions:
        if action.dest == "dataloader_pin_memory":
            action.nargs, action.const = "?", True
    parser.add_argument(
        "--no_dataloader_pin_memory",
        "--no-dataloader-pin-memory",
        action="store_false",
        dest="dataloader_pin_memory",
        default=None,
        help="Do not pin batches (same as --dataloader_pin_memory false).",
    )


def parse_train_args(argv: list[str]) -> RqaTrainingArguments:
    """Parse ``rqa train`` flags; ``--config FILE`` supplies defaults that the command line overrides."""
    return parse_with_config(make_parser(), RqaTrainingArguments, argv)


def parse_with_config(parser: Any, arguments_class: type, argv: list[str] | None) -> Any:
    """Parse ``argv`` into ``arguments_class``; a ``--config`` file's values become defaults that flags override.

    A flag the parser refuses (a value outside its choices, a number that is not one) is one ``RqaError`` line,
    not argparse's usage of several hundred flags.
    """

    def refuse(message: str) -> NoReturn:
        raise RqaError(f"{parser.prog}: {message}")

    parser.error = refuse  # type: ignore[method-assign]
    pre, _ = parser.parse_known_args(argv)
    config_path = getattr(pre, "config", None)
    if config_path:
        values = _load_config_file(config_path)
        known = {f.name for f in fields(arguments_class)}
        unknown = sorted(set(values) - known)
        if unknown:
            import difflib

            hints = [
                f"'{name}'" + (f" (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(name, known, 1)) else "")
                for name in unknown
            ]
            raise RqaError(f"config file {config_path}: unknown flags {', '.join(hints)}")
        parser.set_defaults(**values)
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:
        raise RqaError(str(error)) from None
    return args
