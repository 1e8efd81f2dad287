"""A tied embedding table takes the lookup's gradient as the rows of the batch's tokens, not as a whole table.

Where a model ties its input embeddings to its LM head (SmolLM2, Llama-3.2-1B, Qwen2.5-0.5B, ...), the table
gets two gradients in each backward pass: the head's, dense, and the lookup's. Autograd builds the lookup's as a
dense ``vocab x hidden`` tensor of zeros with a few hundred rows filled (113 MB for SmolLM2-135M) and adds it to
the head's: two passes over the table that a CPU's memory bandwidth pays for (about 0.5 s of an 11 s step on two
cores). A sparse lookup gradient is added into the head's dense one in place, at the cost of its rows only. The
parameter's gradient is the same dense tensor as before, so optimizers, clipping and checkpoints see no
difference.

Single-process CPU training only: DDP builds its buckets differently for sparse embeddings, and on a GPU the
dense backward costs little.
"""

from __future__ import annotations

from typing import Any

import torch


def _densify(parameter: torch.Tensor) -> None:
    """Where the lookup's gradient arrived first (nothing dense to add it to yet), make it dense for the optimizer."""
    if parameter.grad is not None and parameter.grad.is_sparse:
        parameter.grad = parameter.grad.to_dense()


def sparse_tied_embedding_gradient(model: Any) -> bool:
    """Give ``model``'s input embeddings a sparse lookup gradient when they are a plain ``nn.Embedding`` whose table
    is the LM head's weight; whether it did."""
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    plain = type(embeddings) is torch.nn.Embedding and "forward" not in vars(embeddings)
    if not plain or head is None or getattr(head, "weight", None) is not embeddings.weight:
        return False
    embeddings.sparse = True
    embeddings.weight.register_post_accumulate_grad_hook(_densify)
    return True
