"""``RqaTrainer``: a ``transformers.Trainer`` that computes a named loss on supervised positions only, and
runs the end-to-end evaluation whenever the Trainer evaluates.

Prompts (passages, history) are most of the tokens, so the LM head — a ``hidden x vocab`` matmul — is applied
only where labels are not -100 instead of materialising logits for the whole sequence. The model's own forward
computes those logits (``logits_to_keep`` as a boolean mask), so whatever a family does after its head —
Gemma's soft-capping, Granite's ``logits_scaling``, Cohere's ``logit_scale``, MiniCPM's hidden-state scaling —
is applied exactly as in inference, and DDP, FSDP and DataParallel wrappers see an ordinary forward call.
"""

from __future__ import annotations

import contextlib
import functools
import random
import sys
from collections.abc import Iterator
from typing import Any

import numpy
import torch
from transformers import Trainer, TrainerCallback

from rqa.data import IGNORE_INDEX
from rqa.memory import give_freed_pages_back, glibc


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The causal LM inside DataParallel/DDP (``.module``) and peft (``get_base_model``) wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextlib.contextmanager
def random_state_kept() -> Iterator[None]:
    """Leaves torch's (CPU and current GPU), Python's and NumPy's random streams as it found them.

    Evaluating draws from them: every DataLoader iterator draws a seed from torch's generator, an empty one too.
    Without this, how often a run evaluates would change its later batches' order and dropout, and runs from the
    same seed with different ``--eval_steps`` would train different models.
    """
    python_state, numpy_state = random.getstate(), numpy.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        numpy.random.set_state(numpy_state)


@functools.cache
def _slices_logits_by_mask(model_class: type) -> bool:
    """Whether this class's forward takes a boolean ``(batch, length)`` ``logits_to_keep`` and returns the logits
    of the kept positions only: the forwards that go through transformers' ``slice_logits_to_keep``."""
    import inspect

    if "logits_to_keep" not in inspect.signature(model_class.forward).parameters:
        return False
    return "slice_logits_to_keep" in vars(sys.modules.get(model_class.__module__, object))


def supervised_logits(model: torch.nn.Module, inputs: dict[str, Any], mask: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, vocab]`` at the positions whose next token is supervised (``mask`` is ``labels[:, 1:]`` != -100).

    Models whose forward cannot keep logits by mask compute them everywhere; the kept rows are the same.
    """
    if _slices_logits_by_mask(type(unwrapped(model))):
        keep = torch.zeros(mask.shape[0], mask.shape[1] + 1, dtype=torch.bool, device=mask.device)
        keep[:, :-1] = mask
        return model(**inputs, use_cache=False, logits_to_keep=keep).logits
    return model(**inputs, use_cache=False).logits[:, :-1][mask]


def supervised_token_count(batches: list[dict[str, Any]]) -> int:
    """Supervised tokens in the micro-batches of one optimizer step: the loss's ``num_items``."""
    return sum(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) for batch in batches)


class GiveFreedPagesBack(TrainerCallback):
    """``malloc_trim`` after every forward/backward pass and optimizer step, so that the heap's freed fragments do
    not stay resident into the next one. It costs time (the pages fault back in when reused): for memory modes."""

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        give_freed_pages_back()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        give_freed_pages_back()


class RqaTrainer(Trainer):
    """Trainer with a pluggable loss (see ``rqa list-plugins``) and an end-to-end evaluation hook."""

    def __init__(self, *args: Any, loss: Any, e2e_evaluator: Any = None, **kwargs: Any) -> None:
        # a compute_loss_func tells Trainer to count supervised tokens across the accumulated step
        super().__init__(*args, compute_loss_func=loss, **kwargs)
        self.loss = loss
        self.e2e_evaluator = e2e_evaluator
        memory_mode = getattr(self.args, "bf16_weights", False) and self.args.device.type == "cpu"
        if memory_mode and glibc() is not None:  # --bf16_weights: heap fragments go back after each pass
            self.add_callback(GiveFreedPagesBack())

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        if isinstance(num_items_in_batch, torch.Tensor) and num_items_in_batch.dim() > 0:
            num_items_in_batch = None  # DataParallel's per-replica share; this loss covers every replica's logits
        labels = inputs.pop("labels")
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        with self.accelerator.autocast():  # as accelerate's wrapped forward does, for calls before it wraps
            logits = supervised_logits(model, inputs, mask)
        outputs: Any = {}  # no full-sequence logits exist; prediction_step only needs the loss
        loss = self.loss(logits, targets[mask], num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # num_items counts every rank; DDP averages
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def get_optimizer_cls_and_kwargs(args: Any, model: Any = None) -> tuple[Any, dict[str, Any]]:
        """As Trainer's, but ``--bf16_weights`` trains with torch-optimi's AdamW: its Kahan summation keeps the
        part of each update that a bf16 weight cannot hold (at a learning rate of 1e-5 that is nearly all of it)."""
        if not getattr(args, "bf16_weights", False):
            return Trainer.get_optimizer_cls_and_kwargs(args, model)
        from optimi import AdamW

        settings = {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}
        return AdamW, {**settings, "kahan_sum": True}

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list[Any], Any]:
        """As Trainer's, but under DataParallel ``num_items`` stays the step's exact count.

        Trainer divides it among the GPUs (each replica computes its own loss there); rqa computes one loss over
        every replica's gathered logits, so it needs the whole count.
        """
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.args.n_gpu > 1 and num_items is not None:
            num_items = supervised_token_count(batches)
        return batches, num_items

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """The Trainer's evaluation loss, then the end-to-end evaluation.

        A stop signal during either abandons the evaluation (``rqa.signals``): it takes minutes, schedulers kill
        about 30 s after SIGTERM. Nothing of the end-to-end part is logged or written (an eval loss computed before
        is); the checkpoint is saved here, whatever the save strategy, and training stops. At step 0
        (``eval_on_start``: the base model) nothing was trained yet, so nothing is saved: ``StopRequested`` leaves
        ``train`` before the first step.
        """
        from rqa.signals import StopFlag, StopRequested

        stop = next((c for c in self.callback_handler.callbacks if isinstance(c, StopFlag)), None)
        metrics: dict[str, float] = {}
        try:
            with random_state_kept():  # the checkpoint saved below keeps the training's own state
                if eval_dataset is not None or self.eval_dataset is not None:
                    metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
                if self.e2e_evaluator is not None:
                    scores = self.e2e_evaluator.evaluate_model(
                        self.model,
                        name=f"step-{self.state.global_step}",
                        is_main=self.is_world_process_zero(),
                        stop=stop,
                    )
                    prefixed = {f"{metric_key_prefix}_{key}": value for key, value in scores.items()}
                    self.log(prefixed)
                    metrics.update(prefixed)
        except StopRequested:
            if not self.is_in_train or self.state.global_step == 0:
                raise
            self._save_checkpoint(self.model_wrapped, trial=None)
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)
            self.control.should_save = False  # saved above
            self.control.should_training_stop = True
            best = self.args.metric_for_best_model
            if best and not best.startswith("eval_"):
                best = f"eval_{best}"
            if best and best not in metrics:  # the Trainer compares it next: a value that is never the best
                metrics[best] = float("-inf") if self.args.greater_is_better else float("inf")
        return metrics

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """As Trainer's, but a resumed run does not evaluate on start.

        Its base model was evaluated at step 0 when the run began (the checkpoint's log history holds it), and
        Trainer would evaluate the checkpoint's step a second time, rewriting files that already exist.
        """
        if resume_from_checkpoint in (None, False) or not self.args.eval_on_start:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        self.args.eval_on_start = False
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self.args.eval_on_start = True
