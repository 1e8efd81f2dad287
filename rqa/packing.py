"""Packed or padded training batches: pack only where the model's attention keeps packed examples apart.

Packing a batch into one row removes all padding, but it is only the same training when no example attends to
another. Which attention code a family runs, whether its forward takes restarting position ids, a position bias,
chunked or windowed layers: the model itself is the reliable witness. Before training, two short random examples
run packed into one row and one at a time; where the outputs differ, rqa pads instead and says why, once.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("rqa")
PROBE_LENGTHS = (11, 7)  # two examples; each is lengthened past any short attention window in the config
WINDOW_KEYS = ("sliding_window", "attention_chunk_size", "local_window_size", "window_size")


def packing_keeps_examples_apart(model: Any) -> bool:
    """Whether this model's attention can separate packed examples by their restarting position ids at all.

    flash-attention 2 does it through its variable-length kernel, rqa's packed SDPA by attending within each
    example; SDPA and eager do it where transformers derives a block-diagonal mask from the position ids (its
    ``find_packed_sequence_indices``).
    """
    from rqa.attention import PACKED_SDPA

    implementation = getattr(model.config, "_attn_implementation", "")
    if implementation in ("flash_attention_2", PACKED_SDPA):
        return True
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:
        return False
    return implementation in ("sdpa", "eager")


def _probe_lengths(config: Any) -> tuple[int, ...]:
    """Example lengths that exceed every short window or chunk the config declares (tiny test configs have them)."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    windows = [getattr(text_config, key, None) for key in WINDOW_KEYS]
    shortest = min((w for w in windows if isinstance(w, int) and 0 < w <= 64), default=0)
    return tuple(length + shortest for length in PROBE_LENGTHS)


def packing_problem(model: Any, collator: Any) -> str | None:
    """Why packing changes this model's outputs, or None when a packed row equals its examples run one at a time.

    Runs three short forward passes without gradients. Under DeepSpeed ZeRO-3 one rank cannot run a forward
    alone (its weights are partitioned across ranks), so the check is skipped there.
    """
    import torch

    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover - older transformers
        is_deepspeed_zero3_enabled = None
    if is_deepspeed_zero3_enabled is not None and is_deepspeed_zero3_enabled():
        return None
    parameter = next(model.parameters())
    vocabulary = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    examples = [
        torch.randint(min(10, vocabulary - 1), vocabulary, (n,), generator=generator).tolist()
        for n in _probe_lengths(model.config)
    ]
    batch = collator([{"input_ids": ids, "labels": ids} for ids in examples])
    batch.pop("labels")
    batch = {k: v.to(parameter.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = model(**batch, use_cache=False).logits[0, : sum(map(len, examples))].float()
            alone = torch.cat(
                [
                    model(input_ids=torch.tensor([ids], device=parameter.device), use_cache=False).logits[0].float()
                    for ids in examples
                ]
            )
    except Exception as error:  # any failure means this forward does not take packed rows
        return f"its forward does not take packed rows ({type(error).__name__}: {str(error).splitlines()[0]})"
    finally:
        model.train(was_training)
    # exact separation differs by rounding only (~1e-7 of the logits' scale in fp32); a leak, even through one
    # state-space layer of a random tiny model, by 1e-3 or more
    tolerance = 1e-5 if parameter.dtype == torch.float32 else 2e-2
    difference = float((packed - alone).abs().max())
    if difference > tolerance * max(float(alone.abs().max()), 1e-6):
        return f"packed examples leak into each other (largest logit difference {difference:.3g})"
    return None


def choose_collator(padding_free: str, model: Any, pad_token_id: int, pad_to_multiple_of: int | None = None) -> Any:
    """Packed batches where they train exactly as padded ones would, padded batches elsewhere.

    Packing under SDPA switches the model to rqa's packed SDPA, which attends within each example instead of
    masking a whole-row score matrix (same outputs; padded batches, as in evaluation, still get plain SDPA).
    ``padding_free`` is ``auto``, ``true`` or ``false``; ``true`` on a model that packing would train wrongly is
    an error rather than a silent change.
    """
    from rqa.attention import register_packed_sdpa
    from rqa.data import PackingCollator, PaddingCollator
    from rqa.errors import RqaError

    padded = PaddingCollator(pad_token_id, pad_to_multiple_of=pad_to_multiple_of)
    if padding_free == "false" or (padding_free == "auto" and not packing_keeps_examples_apart(model)):
        return padded
    implementation = model.config._attn_implementation
    if implementation == "sdpa":
        model.set_attn_implementation(register_packed_sdpa())
    packed = PackingCollator(pad_token_id, pad_to_multiple_of=pad_to_multiple_of)
    problem = packing_problem(model, packed)
    if problem is None:
        how = "SDPA attends within each example" if implementation == "sdpa" else "examples kept apart"
        log.info("padding-free batches: each batch is packed into one row; %s", how)
        return packed
    if implementation == "sdpa":
        model.set_attn_implementation("sdpa")
    family = type(model).__name__
    if padding_free == "true":
        raise RqaError(f"--padding_free true: {family} cannot train on packed rows here: {problem}; use auto or false")
    log.warning("%s: padded batches instead of packed ones, since %s", family, problem)
    return padded
