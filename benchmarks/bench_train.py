"""Training throughput: rqa against TRL's SFTTrainer (padded and padding-free) and the LocalRQA way.

Every tool trains the same model on the same first N Faire examples in the same order (no shuffling), batch 4,
max length 1024, with the same optimizer and schedule (rqa's defaults), each in its own process so that peak
memory is per tool. What is compared: real (non-padding) tokens per second over the measured steps, the share
of computed tokens that is padding, peak RSS, and the losses (the same batches must give the same loss).

    .venv/bin/python benchmarks/bench_train.py                    # fp32 and bf16, 10 measured steps
    .venv/bin/python benchmarks/bench_train.py --precision fp32 --steps 5
    python benchmarks/bench_train.py --device cuda --precision bf16 --steps 30 --warmup 3   # on a GPU
    python benchmarks/bench_train.py --device cuda --precision bf16 --model llama-1b --batch_size 16 \
        --tools rqa trl trl-padding-free rqa-lora trl-lora   # a 1B-class model, full fine-tuning and LoRA

On a GPU, memory is each process's peak of allocated GPU memory instead of its peak RSS, and each tool's model
FLOPs per second are set against the GPU's bf16 peak (MFU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import (
    CACHE_DIR,
    chatml_encoder,
    emit_json,
    generator_path,
    load_average,
    markdown_table,
    median,
    peak_rss_gb,
    print_table,
    ratio,
    run_child,
    section_preamble,
    train_examples,
    wait_for_quiet,
    write_section,
)

STARTED = time.perf_counter()
TOOLS: dict[str, str] = {
    "rqa": "rqa, defaults (packed batches)",
    "rqa-gc": "rqa, packed + gradient checkpointing",
    "rqa-micro": "rqa, one example per forward, gradients accumulated",
    "rqa-micro-gc": "rqa, one example per forward + gradient checkpointing",
    "rqa-bf16w": "rqa, bf16 weights and AdamW state (--bf16_weights)",
    "rqa-micro-bf16w": "rqa, one example per forward, bf16 weights and AdamW state",
    "rqa-keep-all": "rqa, defaults but every activation kept (--lean_activations false)",
    "rqa-micro-bf16w-keep-all": "rqa, one example per forward, bf16 weights, every activation kept",
    "rqa-padded": "rqa, padded batches (--padding_free false)",
    "rqa-grouped": "rqa, padded, group_by_length",
    "rqa-lora": "rqa, LoRA adapters on every linear layer",
    "trl": "TRL SFTTrainer, prompt-completion",
    "trl-padding-free": "TRL SFTTrainer, padding_free",
    "trl-lora": "TRL SFTTrainer, prompt-completion, LoRA adapters on every linear layer",
    "localrqa-way": "LocalRQA way (pad to max_length, loss on all)",
}
DEFAULT_TOOLS = ["rqa", "rqa-gc", "trl", "trl-padding-free", "localrqa-way"]
RQA_TOOLS = tuple(tool for tool in TOOLS if tool.startswith("rqa"))
BASELINES = ("trl", "trl-padding-free", "trl-lora", "localrqa-way")
LORA = {"r": 16, "alpha": 16, "dropout": 0.05}  # the same adapters for rqa and TRL: every linear layer but the head
MODELS = {
    "smollm2": "SmolLM2-135M-Instruct (embedded)",
    "llama-1b": "a randomly initialised model of Llama-3.2-1B's shape (1.24 B parameters, 16 layers, hidden 2048, "
    "vocabulary 128,256, tied embeddings) with SmolLM2's tokenizer",
}
# Llama-3.2-1B's config.json: a model size users fine-tune, built without a download
LLAMA_1B_SHAPE = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": True,
}
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}  # dense bf16, from each GPU's data sheet
ANSWER_LABELS = "bench_answer_labels"  # extra batch key: answer-only labels for tools whose labels cover more


@dataclass
class Settings:
    steps: int
    warmup: int
    batch_size: int
    max_length: int
    examples: int
    precision: str
    threads: int
    grouped_pool: int = 0  # examples rqa-grouped samples from; 0: the whole training file
    device: str = "cpu"  # or "cuda"
    model: str = "smollm2"  # a key of MODELS


@dataclass
class Result:
    tool: str
    precision: str
    real_tokens_per_s: float = 0.0
    padding_share: float = 0.0
    median_step_s: float = 0.0
    measured_s: float = 0.0
    peak_rss_gb: float = 0.0
    rss_at_train_begin_gb: float = 0.0
    mean_loss: float = 0.0
    first_batch_answer_ce: float = 0.0
    step1_loss: float = 0.0
    setup_s: float = 0.0
    real_tokens: int = 0
    computed_tokens: int = 0
    same_ids_as_rqa: str = ""
    compute_dtype: str = ""
    peak_gpu_gb: float = 0.0  # peak allocated GPU memory (CUDA runs)
    gpu: str = ""
    packed_attention: str = ""  # how rqa's packed batches were attended to
    model_tflops_per_s: float = 0.0  # the FLOPs the training objective needs (model_flops), per second
    mfu: float = 0.0  # model FLOPs per second ÷ the GPU's dense bf16 peak; 0 where the peak is unknown
    step_s: list[float] = field(default_factory=list)
    load_at_end: float = 0.0  # 1-minute load average when the child finished: 2 is this process alone
    all_tokens_per_s: list[float] = field(default_factory=list)  # every repeat, when run more than once
    notes: list[str] = field(default_factory=list)


# --- what runs inside each child -------------------------------------------------------------------------


def answer_ce(model: Any, batch: dict[str, Any], labels: Any) -> float:
    """Mean cross-entropy over ``labels != -100`` before any update, in fp32 and without full logits.

    Computed the same way for every tool from the batch its own collator built, so equal values mean the
    tools train on the same tokens with the same targets.
    """
    import torch
    import torch.nn.functional as F

    from rqa.trainer import unwrapped

    device = model.device  # collators build batches on the CPU; Trainer moves them to a GPU afterwards
    inputs = {
        k: v.to(device) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
        if k != "labels" and not k.startswith("bench_")
    }
    labels = labels.to(device)
    model = unwrapped(model)
    backbone = getattr(model, model.base_model_prefix)
    with torch.no_grad():
        # no KV cache: with one, transformers skips the packed-sequence mask and padding-free rows would mix
        hidden = backbone(**inputs, use_cache=False).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        mask = targets != -100
        logits = model.get_output_embeddings()(hidden[mask]).float()
        return float(F.cross_entropy(logits, targets[mask]))


def example_lengths(features: list[dict[str, Any]]) -> list[int]:
    """Each example's real length: rows padded in the dataset (the LocalRQA way) carry an attention mask."""
    return [
        int(sum(feature["attention_mask"])) if "attention_mask" in feature else len(feature["input_ids"])
        for feature in features
    ]


class BatchRecorder:
    """Wraps a tool's collator: counts each batch's real, computed and answer tokens, scores the first batch."""

    def __init__(self, collator: Any, model: Any) -> None:
        self.collator, self.model = collator, model
        self.batches: list[dict[str, int]] = []
        self.first_batch_ce: float | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        answer_labels = batch.pop(ANSWER_LABELS, None)
        # padding-free batches are one row of concatenated examples with no attention mask (on a GPU rqa's is
        # rounded up with padding tokens): their real tokens are the examples' own
        real = (
            int(batch["attention_mask"].sum())
            if "attention_mask" in batch
            else sum(len(feature["input_ids"]) for feature in features)
        )
        targets = batch["labels"] if answer_labels is None else answer_labels
        lengths = example_lengths(features)
        self.batches.append(
            {
                "real": real,
                "computed": int(batch["input_ids"].numel()),
                "answer": int((targets != -100).sum()),
                "squared_lengths": sum(length * length for length in lengths),
            }
        )
        if self.first_batch_ce is None:  # collated before the first forward: the weights are untouched
            self.first_batch_ce = answer_ce(self.model, batch, targets)
        return batch


def model_flops(model: Any, batches: list[dict[str, int]], adapters: bool) -> float:
    """The FLOPs the training objective needs on these batches, whatever a tool computes beyond them.

    Per real token a forward and backward pass cost 6 FLOPs per weight of the backbone's matrix products (4
    where LoRA freezes the weights: no weight gradients), the LM head the same per answer token only (the loss
    needs no logits elsewhere), and causal attention 6 × layers × width × length² per example. Padding,
    rounding and logits at prompt positions are a tool's own extra work and count for nobody.
    """
    import torch

    from rqa.trainer import unwrapped

    model = unwrapped(model)
    config = model.config
    backbone = getattr(model, model.base_model_prefix)
    body = sum(
        module.weight.numel()
        for name, module in backbone.named_modules()
        if isinstance(module, torch.nn.Linear) and "lora_" not in name
    )
    head = model.get_output_embeddings().weight.numel()
    width = config.num_attention_heads * (
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )
    per_weight = 4 if adapters else 6
    return float(
        sum(
            per_weight * (body * b["real"] + head * b["answer"])
            + 6 * config.num_hidden_layers * width * b["squared_lengths"]
            for b in batches
        )
    )


def bf16_peak_tflops(gpu: str) -> float:
    return next((peak for name, peak in BF16_PEAK_TFLOPS.items() if name in gpu), 0.0)


def watch_compute_dtype(model: Any) -> set[str]:
    """The dtypes the first projection of the backbone produces while training: is mixed precision really on?

    ``bf16=True`` only says what was asked for; Trainer leaves autocast to accelerate, which wraps
    ``model.forward``, so a loss that calls submodules directly can silently compute in fp32.
    """
    import torch

    seen: set[str] = set()
    first_linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))

    def hook(module: Any, inputs: Any, output: Any) -> None:
        if torch.is_grad_enabled():  # training steps only, not the no-grad first-batch check
            seen.add(str(output.dtype).removeprefix("torch."))

    first_linear.register_forward_hook(hook)
    return seen


def watch_packed_attention() -> dict[str, int]:
    """Counts the layer calls rqa's packed attention sent to PyTorch's variable-length flash kernel."""
    import rqa.attention as attention

    calls = {"varlen": 0}
    original = attention.varlen_attention

    def counted(*args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        calls["varlen"] += output is not None
        return output

    attention.varlen_attention = counted
    return calls


def make_clock(warmup: int) -> Any:
    import torch
    from transformers import TrainerCallback

    def now() -> float:
        if torch.cuda.is_available():  # GPU work is queued: a step ends when the device has finished it
            torch.cuda.synchronize()
        return time.perf_counter()

    class StepClock(TrainerCallback):
        """Marks when each optimizer step ends; the measured window runs from step ``warmup`` to the last."""

        def __init__(self) -> None:
            self.began: dict[int, float] = {}
            self.ended: dict[int, float] = {}
            self.train_begin = 0.0
            self.rss_at_train_begin = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import psutil

            self.train_begin = now()
            self.rss_at_train_begin = psutil.Process().memory_info().rss / 1024**3

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.began[state.global_step + 1] = now()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ended[state.global_step] = now()

    return StepClock()


def common_args(settings: Settings, output_dir: str, sampling: str = "sequential") -> dict[str, Any]:
    """Identical optimisation for every tool: rqa's defaults (lr 1e-5, cosine, 10 % warm-up), no shuffling."""
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": settings.batch_size,
        "max_steps": settings.warmup + settings.steps,
        "learning_rate": 1e-5,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,
        "logging_steps": 1,
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": settings.device == "cpu",
        "bf16": settings.precision == "bf16",
        "gradient_checkpointing": False,  # TRL turns it on by default; rqa and Trainer do not
        "train_sampling_strategy": sampling,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "seed": 42,
    }


def load_model(path: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")


def model_path(settings: Settings) -> str:
    """The checkpoint every tool trains: the embedded generator or the 1B-shaped model built by ``build_model``."""
    return generator_path() if settings.model == "smollm2" else str(CACHE_DIR / f"{settings.model}-random")


def build_model(settings: Settings) -> None:
    """Saves a randomly initialised fp32 model of Llama-3.2-1B's shape once, so that every tool loads the same."""
    target = Path(model_path(settings))
    if settings.model == "smollm2" or (target / "config.json").exists():
        return
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(generator_path())
    config = LlamaConfig(
        **LLAMA_1B_SHAPE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=CACHE_DIR))
    LlamaForCausalLM(config).save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    os.replace(staging, target)


def lora_config() -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def rqa_trainer(settings: Settings, output_dir: str, encoded: list[dict[str, Any]], tool: str) -> Any:
    """rqa as ``rqa train`` assembles it: RqaTrainingArguments, its collator choice, answer-ce."""
    from rqa.config import RqaTrainingArguments
    from rqa.models import load_for_training, load_tokenizer, training_collator
    from rqa.plugins import get_plugins
    from rqa.trainer import RqaTrainer

    path = model_path(settings)
    tokenizer = load_tokenizer(path)
    options = common_args(settings, output_dir, "group_by_length" if tool == "rqa-grouped" else "sequential")
    options["gradient_checkpointing"] = tool.endswith("-gc")
    options["bf16_weights"] = "-bf16w" in tool
    options["lean_activations"] = not tool.endswith("-keep-all")
    if tool.startswith("rqa-micro"):
        options["per_device_train_batch_size"] = 1
        options["gradient_accumulation_steps"] = settings.batch_size
    if tool == "rqa-lora":
        options |= {"lora_r": LORA["r"], "lora_alpha": LORA["alpha"], "lora_dropout": LORA["dropout"]}
    padding_free = "false" if tool in ("rqa-padded", "rqa-grouped") else "auto"
    args = RqaTrainingArguments(**options, max_seq_length=settings.max_length, padding_free=padding_free)
    model = load_for_training(args, path)  # as `rqa train` loads it: the checkpoint is fp32
    return RqaTrainer(
        model=model,
        args=args,
        train_dataset=encoded,
        data_collator=training_collator(args, model, tokenizer),
        processing_class=tokenizer,
        loss=get_plugins()["losses"].create("answer-ce"),
    )


def trl_trainer(
    settings: Settings, output_dir: str, rendered: list[Any], padding_free: bool, adapters: bool = False
) -> Any:
    """TRL's SFTTrainer on prompt-completion rows holding rqa's rendered prompt and answer text."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    path = model_path(settings)
    rows = [{"prompt": r.prompt, "completion": r.answer} for r in rendered]
    config = SFTConfig(
        **common_args(settings, output_dir),
        # padding-free does not truncate, and TRL refuses max_length with it; no example here exceeds 1024
        max_length=None if padding_free else settings.max_length,
        completion_only_loss=True,
        padding_free=padding_free,
    )
    return SFTTrainer(
        model=load_model(path),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(path),
        peft_config=lora_config() if adapters else None,
    )


def localrqa_trainer(settings: Settings, output_dir: str, rendered: list[Any], encoded: list[dict[str, Any]]) -> Any:
    """LocalRQA's recipe: tokenize the whole text padded to max_length, labels = input_ids (padding included)."""
    from transformers import AutoTokenizer, Trainer, TrainingArguments, default_data_collator

    path = model_path(settings)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = []
    for text, item in zip((r.text for r in rendered), encoded, strict=True):
        tokens = tokenizer(text, padding="max_length", truncation=True, max_length=settings.max_length)
        answer = item["labels"] + [-100] * (settings.max_length - len(item["labels"]))
        rows.append({**tokens, "labels": list(tokens["input_ids"]), ANSWER_LABELS: answer[: settings.max_length]})
    return Trainer(
        model=load_model(path),
        args=TrainingArguments(**common_args(settings, output_dir)),
        train_dataset=rows,
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )


def compare_ids(trainer: Any, tool: str, encoded: list[dict[str, Any]]) -> str:
    """How many training rows hold exactly rqa's input ids and labels (the same tokens, the same targets)."""
    if tool.startswith("rqa"):
        return "-"
    same = 0
    for row, item in zip(trainer.train_dataset, encoded, strict=True):
        ids = list(row["input_ids"])
        if tool == "localrqa-way":
            same += ids[: len(item["input_ids"])] == item["input_ids"]
        else:
            same += ids == item["input_ids"] and list(row["labels"]) == item["labels"]
    return f"{same}/{len(encoded)}"


def run_tool(tool: str, settings: Settings) -> Result:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to PyTorch")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    grouped = tool == "rqa-grouped"
    # length grouping only groups within mega-batches of up to 50 batches, and a mega-batch holds just one batch
    # below 16 × batch size examples: on the first N examples it would be random batching, so sample as a real run
    examples = train_examples((settings.grouped_pool or None) if grouped else settings.examples)
    encoder = chatml_encoder(settings.max_length)
    encoded, stats = encoder.encode_all(examples)
    encoded = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in encoded]
    notes = []
    if grouped:
        notes.append(
            f"{tool} draws its batches from the whole training file ({len(encoded)} examples), as a real run does: "
            "length grouping sorts within mega-batches that hold a single batch below 16 batches' worth of "
            "examples, so on the first N it would not group at all; its batches and losses differ from the others'"
        )
    if tool.startswith("rqa-micro"):
        notes.append(
            f"{tool} runs each batch as {settings.batch_size} accumulated one-example forward passes (the same "
            "batches and gradients; --per_device_train_batch_size 1 --gradient_accumulation_steps "
            f"{settings.batch_size}): its 'CE batch 1' covers the first example only, its 'own loss 1' the batch"
        )
    if stats.trimmed or stats.dropped:  # the text-based tools would then see other text: 'ids = rqa' shows it
        notes.append(f"{tool}: rqa trimmed {stats.trimmed} and dropped {len(stats.dropped)} over-long examples")
    rendered = [encoder.formatter.render(e, e.gold_docs) for e in examples]

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix="train-") as output_dir:
        if tool in RQA_TOOLS:
            trainer = rqa_trainer(settings, output_dir, encoded, tool)
        elif tool in ("trl", "trl-padding-free", "trl-lora"):
            trainer = trl_trainer(
                settings, output_dir, rendered, padding_free=tool == "trl-padding-free", adapters=tool == "trl-lora"
            )
        elif tool == "localrqa-way":
            trainer = localrqa_trainer(settings, output_dir, rendered, encoded)
        else:
            raise SystemExit(f"unknown tool {tool}; choose from {', '.join(TOOLS)}")
        same_ids = compare_ids(trainer, tool, encoded)
        recorder = BatchRecorder(trainer.data_collator, trainer.model)
        trainer.data_collator = recorder
        clock = make_clock(settings.warmup)
        trainer.add_callback(clock)
        compute_dtypes = watch_compute_dtype(trainer.model)
        varlen_calls = watch_packed_attention()
        trainer.train()
        implementation = trainer.model.config._attn_implementation

    first, last = settings.warmup, settings.warmup + settings.steps
    per_step = settings.batch_size if tool.startswith("rqa-micro") else 1  # collated batches per optimizer step
    measured = recorder.batches[first * per_step : last * per_step]
    seconds = clock.ended[last] - clock.ended[first]
    real = sum(b["real"] for b in measured)
    computed = sum(b["computed"] for b in measured)
    step_s = [clock.ended[s] - clock.began[s] for s in range(1, last + 1)]
    losses = {int(e["step"]): float(e["loss"]) for e in trainer.state.log_history if "loss" in e}
    measured_losses = [losses[s] for s in range(first + 1, last + 1) if s in losses]
    on_gpu = settings.device == "cuda"
    packed = ""
    if tool in RQA_TOOLS and implementation == "sdpa_packed":
        packed = "flash varlen kernel" if varlen_calls["varlen"] else "SDPA per example"
    flops_per_s = model_flops(trainer.model, measured, adapters=tool.endswith("-lora")) / seconds
    peak = bf16_peak_tflops(torch.cuda.get_device_name()) if on_gpu and settings.precision == "bf16" else 0.0
    return Result(
        tool=tool,
        precision=settings.precision,
        real_tokens_per_s=real / seconds,
        padding_share=1 - real / computed,
        median_step_s=median(step_s[first:]),
        measured_s=seconds,
        peak_rss_gb=peak_rss_gb(),
        rss_at_train_begin_gb=clock.rss_at_train_begin,
        mean_loss=sum(measured_losses) / max(len(measured_losses), 1),
        first_batch_answer_ce=recorder.first_batch_ce or 0.0,
        step1_loss=losses.get(1, 0.0),
        setup_s=clock.train_begin - STARTED,
        real_tokens=real,
        computed_tokens=computed,
        same_ids_as_rqa=same_ids,
        compute_dtype="+".join(sorted(compute_dtypes)),
        peak_gpu_gb=torch.cuda.max_memory_allocated() / 1024**3 if on_gpu else 0.0,
        gpu=torch.cuda.get_device_name() if on_gpu else "",
        packed_attention=packed or implementation,
        model_tflops_per_s=flops_per_s / 1e12,
        mfu=flops_per_s / 1e12 / peak if peak else 0.0,
        step_s=[round(s, 3) for s in step_s],
        load_at_end=os.getloadavg()[0],
        notes=notes,
    )


# --- the parent: run every tool, compare, report ---------------------------------------------------------


def report(results: list[Result], settings: Settings, load_before: str, write: bool = True) -> None:
    by_tool = {r.tool: r for r in results}
    on_gpu = settings.device == "cuda"

    def memory(r: Result) -> float:
        return r.peak_gpu_gb if on_gpu else r.peak_rss_gb

    columns = [
        "tool",
        "real tok/s",
        "runs tok/s",
        "padding",
        "computed in",
        "step s",
        "peak GPU GB" if on_gpu else "peak RSS GB",
        "mean loss",
        "CE batch 1",
        "own loss 1",
        "ids = rqa",
        "setup s",
        "load",
    ]
    if on_gpu:
        columns[4:4] = ["model TFLOP/s", "MFU"]
    rows = [
        [
            r.tool,
            f"{r.real_tokens_per_s:.0f}",
            " / ".join(f"{t:.0f}" for t in r.all_tokens_per_s) or "-",
            f"{r.padding_share:.1%}",
            r.compute_dtype,
            f"{r.median_step_s:.3f}" if on_gpu else f"{r.median_step_s:.2f}",
            f"{memory(r):.2f}",
            f"{r.mean_loss:.4f}",
            f"{r.first_batch_answer_ce:.4f}",
            f"{r.step1_loss:.4f}",
            r.same_ids_as_rqa,
            f"{r.setup_s:.1f}",
            f"{r.load_at_end:.1f}",
        ]
        for r in results
    ]
    if on_gpu:
        for row, r in zip(rows, results, strict=True):
            row[4:4] = [f"{r.model_tflops_per_s:.0f}", f"{r.mfu:.1%}" if r.mfu else "-"]
    ratio_rows = []
    for name in RQA_TOOLS:
        if name not in by_tool:
            continue
        mine = by_tool[name]
        for baseline in BASELINES:
            # adapters against adapters, every weight against every weight
            if baseline in by_tool and name.endswith("-lora") == baseline.endswith("-lora"):
                other = by_tool[baseline]
                ratio_rows.append(
                    [
                        f"{name} / {baseline}",
                        ratio(mine.real_tokens_per_s, other.real_tokens_per_s),
                        ratio(memory(mine), memory(other)),
                        ratio(mine.computed_tokens, other.computed_tokens),
                    ]
                )
    ratio_columns = ["ratio", "real tokens/s", "peak GPU memory" if on_gpu else "peak RSS", "computed tokens"]
    where = f"{settings.precision} on {results[0].gpu}" if on_gpu else settings.precision
    if settings.model != "smollm2":
        where += f", {settings.model}"
    title = f"training, {where}: {settings.steps} measured steps after {settings.warmup} warm-up"
    print_table(title, columns, rows)
    print_table(
        "ratios (above 1×: rqa processes more real tokens per second / uses more memory)", ratio_columns, ratio_rows
    )
    if not write:
        return
    notes = sorted({note for r in results for note in r.notes})
    expected = "bfloat16" if settings.precision == "bf16" else "float32"
    notes += [
        f"{r.tool} computed in {r.compute_dtype} although {settings.precision} was asked for: the precision setting "
        "had no effect on its training steps"
        for r in results
        if r.compute_dtype and expected not in r.compute_dtype
    ]
    if on_gpu:
        attention = sorted({f"{r.tool}: {r.packed_attention}" for r in results if r.tool in RQA_TOOLS})
        notes.append(
            "on the GPU, memory is each process's peak allocated GPU memory, and steps are timed after the device "
            "has finished them; rqa's packed batches were attended to by: " + "; ".join(attention)
        )
        notes.append(
            "'model TFLOP/s' counts the FLOPs the training objective needs, the same for every tool on the same "
            "batches: 6 per backbone weight per real token (4 for LoRA, which computes no weight gradients), the "
            "LM head's the same per answer token only, and causal attention (6 × layers × width × length² per "
            "example); padding, rounding and logits at prompt positions are a tool's extra work and count for "
            f"nobody. 'MFU' sets them against the GPU's dense bf16 peak ({bf16_peak_tflops(results[0].gpu):.0f} "
            "TFLOP/s on its data sheet)"
        )
    if any(r.tool.endswith("-lora") for r in results):
        notes.append(
            f"LoRA: rank {LORA['r']}, alpha {LORA['alpha']}, dropout {LORA['dropout']} on every linear layer of the "
            "backbone (peft's 'all-linear'), the same adapters for both tools; ratios compare adapters with adapters"
        )
    body = "\n\n".join(
        [
            f"## Training throughput, {where}",
            section_preamble(load_before, accelerator=results[0].gpu),
            f"{MODELS[settings.model][0].upper()}{MODELS[settings.model][1:]}, first {settings.examples} Faire "
            "training examples in file order, "
            f"batch {settings.batch_size}, max length {settings.max_length}, {settings.steps} measured steps after "
            f"{settings.warmup} warm-up steps, each tool in its own process. Real tokens exclude padding; "
            "'padding' is padding ÷ computed tokens; 'computed in' the dtype the backbone's first projection "
            "produced during training steps (does the precision setting take effect?); 'step s' the median "
            "measured step; 'CE batch 1' the mean "
            "answer-token cross-entropy of the first batch before any update, computed identically for every tool "
            "(fp32) from the batch its own collator built; 'own loss 1' the tool's logged loss on that batch (the "
            "LocalRQA way's covers prompt and padding tokens too); 'ids = rqa' how many rows hold exactly rqa's "
            "input ids and labels; 'setup s' process start to the first step (imports, model, data); 'load' the "
            "1-minute load average as the run ended (on a 2-core CPU, 2 = this run alone). With several runs per tool "
            "('runs tok/s', alternating order) the fastest is shown: other processes only ever add time.",
            markdown_table(columns, [[TOOLS[row[0]], *row[1:]] for row in rows]),
            markdown_table(ratio_columns, ratio_rows),
            *(f"Note: {note}." for note in notes),
        ]
    )
    write_section(section_name(settings), body)


def section_name(settings: Settings) -> str:
    name = (
        f"bench_train:cuda-{settings.precision}" if settings.device == "cuda" else f"bench_train:{settings.precision}"
    )
    return name if settings.model == "smollm2" else f"{name}-{settings.model}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--examples", type=int, default=None, help="default: batch_size × (warmup + steps)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="fp32")
    parser.add_argument(
        "--grouped_pool", type=int, default=0, help="examples rqa-grouped draws batches from (0: the whole file)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per tool, alternating order; best kept")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per child (0: torch's default)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where every tool trains")
    parser.add_argument("--model", choices=list(MODELS), default="smollm2", help="what every tool trains")
    parser.add_argument("--tools", nargs="+", choices=list(TOOLS), default=DEFAULT_TOOLS)
    parser.add_argument("--no_write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--child", choices=list(TOOLS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    examples = args.examples or args.batch_size * (args.warmup + args.steps)
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    if args.child:
        settings = Settings(
            args.steps,
            args.warmup,
            args.batch_size,
            args.max_length,
            examples,
            precisions[0],
            args.threads,
            args.grouped_pool,
            args.device,
            args.model,
        )
        emit_json(asdict(run_tool(args.child, settings)))
        return
    for precision in precisions:
        settings = Settings(
            args.steps,
            args.warmup,
            args.batch_size,
            args.max_length,
            examples,
            precision,
            args.threads,
            args.grouped_pool,
            args.device,
            args.model,
        )
        build_model(settings)
        load_before = load_average()
        runs: dict[str, list[Result]] = {tool: [] for tool in args.tools}
        for round_ in range(args.repeats):
            # alternate the order so that a slow spell on the shared machine does not always hit the same tool
            for tool in args.tools if round_ % 2 == 0 else reversed(args.tools):
                try:
                    runs[tool].append(run_tool_in_child(tool, settings, round_))
                except RuntimeError as error:  # one tool failing must not cost the others' measurements
                    print(f"failed:\n{error}", flush=True)
        if not any(runs.values()):
            raise SystemExit("no tool finished a run")
        results = []
        for tool in args.tools:  # the fastest run: interference from other processes only ever adds time
            if not runs[tool]:
                continue
            best = max(runs[tool], key=lambda r: r.real_tokens_per_s)
            best.all_tokens_per_s = [round(r.real_tokens_per_s, 1) for r in runs[tool]]
            results.append(best)
        raw = CACHE_DIR / f"bench_train-{precision}-{time.strftime('%Y%m%d-%H%M%S')}.json"  # every run's details
        raw.write_text(json.dumps({tool: [asdict(r) for r in rs] for tool, rs in runs.items()}, indent=1))
        report(results, settings, load_before, write=not args.no_write)


def run_tool_in_child(tool: str, settings: Settings, round_: int) -> Result:
    if settings.device == "cpu":  # a busy shared CPU slows every tool; a GPU run is not measured on the CPU
        wait_for_quiet()
    began = time.perf_counter()
    print(f"[{settings.precision} round {round_ + 1}] {TOOLS[tool]} ...", end=" ", flush=True)
    child_argv = [
        str(Path(__file__).resolve()),
        *("--child", tool, "--precision", settings.precision),
        *("--steps", str(settings.steps), "--warmup", str(settings.warmup)),
        *("--batch_size", str(settings.batch_size), "--max_length", str(settings.max_length)),
        *("--examples", str(settings.examples), "--threads", str(settings.threads)),
        *("--grouped_pool", str(settings.grouped_pool), "--device", settings.device, "--model", settings.model),
    ]
    result = Result(**run_child(child_argv))
    print(
        f"{time.perf_counter() - began:.0f} s, {result.real_tokens_per_s:.0f} real tok/s "
        f"(load {result.load_at_end:.2f})",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
