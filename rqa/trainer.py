"""``RqaTrainer``: a ``transformers.Trainer`` that computes a named loss on supervised positions only, and
runs the end-to-end evaluation whenever the Trainer evaluates.

Prompts (passages, history) are most of the tokens, so the LM head — a ``hidden x vocab`` matmul — is applied
only where labels are not -100 instead of materialising logits for the whole sequence.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from rqa.data import IGNORE_INDEX


def split_backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder returning hidden states, LM head) of a causal LM, or None when it has no such split."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    backbone = getattr(base, base.base_model_prefix, None) if hasattr(base, "base_model_prefix") else None
    if head is None or backbone is None or backbone is base:
        return None
    if getattr(base.config, "final_logit_softcapping", None) or getattr(base.config, "logit_scale", None):
        return None  # the model post-processes logits; let it compute them
    return backbone, head


class RqaTrainer(Trainer):
    """Trainer with a pluggable loss (see ``rqa list-plugins``) and an end-to-end evaluation hook."""

    def __init__(self, *args: Any, loss: Any, e2e_evaluator: Any = None, **kwargs: Any) -> None:
        # a compute_loss_func tells Trainer to count supervised tokens across the accumulated step
        super().__init__(*args, compute_loss_func=loss, **kwargs)
        self.loss = loss
        self.e2e_evaluator = e2e_evaluator

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        labels = inputs.pop("labels")
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        split = split_backbone_and_head(model)  # None under DDP/FSDP wrappers: go through their forward
        if split is not None:
            backbone, head = split
            # accelerate applies mixed precision by wrapping model.forward, which this path bypasses
            with self.accelerator.autocast():
                hidden = backbone(**inputs, use_cache=False).last_hidden_state[:, :-1]
                logits = head(hidden[mask])
            outputs: Any = {}  # no full-sequence logits exist; prediction_step only needs the loss
        else:
            outputs = model(**inputs, use_cache=False)
            logits = outputs.logits[:, :-1][mask]
        loss = self.loss(logits, targets[mask], num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # num_items counts every rank; DDP averages
        return (loss, outputs) if return_outputs else loss

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if eval_dataset is not None or self.eval_dataset is not None:
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.e2e_evaluator is not None:
            scores = self.e2e_evaluator.evaluate_model(
                self.model, name=f"step-{self.state.global_step}", is_main=self.is_world_process_zero()
            )
            prefixed = {f"{metric_key_prefix}_{key}": value for key, value in scores.items()}
            self.log(prefixed)
            metrics.update(prefixed)
        return metrics
