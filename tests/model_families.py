"""Tiny random causal LMs of every family in the installed transformers, for the conformance suite.

A family's default config describes a full-size model; ``tiny_config`` shrinks every size it recognises and
gives every short-range attention pattern (sliding windows, chunks) a span shorter than the test's examples,
so that the patterns are exercised. Families whose config needs more than that get a few explicit overrides;
a family that still does not build is skipped with the reason recorded.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

WINDOW = 6  # shorter than the longest test example, so windowed layers really window

SIZES: dict[str, Any] = {
    # widths
    "hidden_size": 32,
    "d_model": 32,
    "n_embd": 32,
    "n_embed": 32,
    "dim": 32,
    "embed_dim": 32,
    "intermediate_size": 64,
    "ffn_dim": 64,
    "n_inner": 64,
    "ffn_hidden_size": 64,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    # depth and heads
    "num_hidden_layers": 2,
    "n_layer": 2,
    "num_layers": 2,
    "n_layers": 2,
    "num_attention_heads": 4,
    "n_head": 4,
    "n_heads": 4,
    "num_heads": 4,
    "num_key_value_heads": 2,
    "n_kv_heads": 2,
    "head_dim": 8,
    "attention_head_dim": 8,
    "rotary_dim": 4,
    # vocabulary and positions
    "vocab_size": 128,
    "max_position_embeddings": 256,
    "n_positions": 256,
    "n_ctx": 256,
    "max_sequence_length": 256,
    # mixture of experts
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "moe_num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_topk": 2,
    "moe_k": 2,
    "n_shared_experts": 1,
    "first_k_dense_replace": 1,
    "n_group": 1,
    "topk_group": 1,
    # latent attention (DeepSeek, MiniCPM3)
    "q_lora_rank": 16,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 4,
    "qk_nope_head_dim": 4,
    "v_head_dim": 8,
    # short-range attention patterns, shorter than the examples
    "sliding_window": WINDOW,
    "attention_chunk_size": WINDOW,
    # state-space layers
    "mamba_d_state": 8,
    "mamba_n_heads": 4,
    "mamba_d_head": 16,
    "mamba_n_groups": 1,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_d_ssm": 64,
    "state_size": 8,
    "ssm_state_size": 8,
    "conv_kernel": 4,
    "time_step_rank": 4,
}

OVERRIDES: dict[str, dict[str, Any]] = {
    "qwen2": {"use_sliding_window": True, "max_window_layers": 1},
    "qwen2_moe": {"use_sliding_window": True, "max_window_layers": 1},
    "granite": {"logits_scaling": 16.0, "embedding_multiplier": 2.0, "residual_multiplier": 0.5},
    "granitemoe": {"logits_scaling": 16.0},
    "granitemoeshared": {"logits_scaling": 16.0, "shared_intermediate_size": 32},
    "granitemoehybrid": {"logits_scaling": 16.0, "shared_intermediate_size": 32},
    "gemma2": {"final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "query_pre_attn_scalar": 8},
    "gemma3_text": {"final_logit_softcapping": 30.0, "query_pre_attn_scalar": 8},
    "cohere": {"logit_scale": 0.25},
    "cohere2": {"logit_scale": 0.25},
}


NOT_CAUSAL = {
    "xlnet": "permutation language model: its predictions depend on the whole (padded) sequence",
}


def causal_lm_families() -> list[str]:
    """Model types of the installed transformers' causal-LM mapping."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def not_decoder_only(model_type: str) -> str | None:
    """Why a family in the causal-LM mapping is not a decoder-only model, or None."""
    from transformers import CONFIG_MAPPING

    try:
        default = CONFIG_MAPPING[model_type]()
    except Exception:  # its defaults do not validate; building it will say why
        return None
    if getattr(default, "is_encoder_decoder", False):
        return "encoder-decoder family: its causal-LM class is the decoder of a sequence-to-sequence model"
    return NOT_CAUSAL.get(model_type)


def model_class(model_type: str) -> type:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    return getattr(importlib.import_module("transformers"), name)


def _accepted(config_class: type) -> set[str]:
    return set(inspect.signature(config_class.__init__).parameters)


def tiny_config(model_type: str) -> Any:
    """The family's config with every recognised size shrunk and short attention spans."""
    from transformers import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    default = config_class()
    known = set(default.to_dict()) | _accepted(config_class)
    values = {key: value for key, value in SIZES.items() if key in known}
    for key in ("sliding_window", "attention_chunk_size"):  # keep "no window" families windowless
        if key in values and getattr(default, key, None) is None and model_type not in OVERRIDES:
            values.pop(key)
    if "kv_lora_rank" in values:  # latent attention: as many key heads as query heads, rotary on the rope part
        values["num_key_value_heads"] = values.get("num_attention_heads", 4)
        if "head_dim" in values:
            values["head_dim"] = values["qk_rope_head_dim"]
    if getattr(default, "is_decoder", None) is False:  # an encoder family's causal-LM class is causal only so
        values["is_decoder"] = True
    values.update(OVERRIDES.get(model_type, {}))
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if key in known:
            values[key] = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}[key]
    config = config_class(**values)
    sub = getattr(config, "text_config", None)
    if sub is not None and sub is not config and hasattr(sub, "to_dict"):  # multimodal: shrink the text model
        nested = {key: value for key, value in SIZES.items() if key in set(sub.to_dict())}
        config = config_class(**{**values, "text_config": {**sub.to_dict(), **nested}})
    return config


MAX_PARAMETERS = 2_000_000


class TooLarge(Exception):
    """The shrunk config still describes a large model: some of its sizes have names ``SIZES`` lacks."""


def tiny_model(model_type: str, seed: int = 0) -> Any:
    """A tiny randomly initialised model of this family, in fp32, with transformers' default attention."""
    import torch

    config = tiny_config(model_type)
    with torch.device("meta"):  # count first: a size left at full scale would allocate gigabytes
        shape = model_class(model_type)._from_config(config, dtype=torch.float32)
    count = sum(p.numel() for p in shape.parameters())
    if count > MAX_PARAMETERS:
        raise TooLarge(f"the tiny config still has {count:,} parameters")
    torch.manual_seed(seed)
    model = model_class(model_type)._from_config(config, dtype=torch.float32)
    if getattr(config, "languages", None) and hasattr(model, "set_default_language"):
        model.set_default_language(config.languages[0])  # X-MOD routes every input through a language adapter
    return model
