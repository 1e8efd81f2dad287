"""fp32 linear layers through oneDNN while a CPU generates, on machines where that is faster than the default.

PyTorch runs an fp32 ``nn.Linear`` on the CPU as a BLAS call (MKL in its wheels). oneDNN, which PyTorch ships
too, has its own fp32 kernels, and on some CPUs they are faster for the shapes generation makes (one prompt's
tokens, or a batch of rows decoding one token each): on a 2-core AMD EPYC the whole Faire evaluation ran 1.03×
faster with them, one run each way (BENCHMARKS.md, "End-to-end evaluation"). Which library wins depends on the
CPU, so a short measurement on the model's own largest layer decides once per process and shape, and
``RQA_CPU_LINEAR=onednn|default`` overrides it.

Both compute the same fp32 products in another order (differences of a few 1e-5 in the logits), so greedy answers
can only differ where two tokens are that close; on Faire they are the same.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

log = logging.getLogger("rqa")

ENVIRONMENT = "RQA_CPU_LINEAR"
CHOICES = ("auto", "onednn", "default")
MARGIN = 1.1  # oneDNN must be this much faster: a near-tie is not worth another numerical path
_decided: dict[tuple[int, int], bool] = {}


def _onednn_forward(module: Any, x: Any) -> Any:
    """oneDNN's fp32 product, or the usual one where the call is not fp32 by fp32: under CPU autocast (a model
    trained with ``--bf16`` generates inside its wrapped ``forward``) or with an input of another dtype, which
    oneDNN's op would refuse, since autocast does not cast for it."""
    import torch

    if x.dtype != module.weight.dtype or torch.is_autocast_enabled("cpu"):
        return torch.nn.functional.linear(x, module.weight, module.bias)
    return torch.ops.mkldnn._linear_pointwise(x, module.weight, module.bias, "none", [], "")


def _available() -> bool:
    import torch

    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _eligible(module: Any) -> bool:
    """A plain fp32 ``nn.Linear`` on the CPU whose ``forward`` nobody has replaced (accelerate's hooks do)."""
    import torch

    weight = getattr(module, "weight", None)
    return (
        type(module) is torch.nn.Linear
        and "forward" not in vars(module)
        and isinstance(weight, torch.Tensor)
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and weight.layout == torch.strided
        and not weight.is_meta
    )


def _seconds(run: Any, repeats: int = 5) -> float:
    run()  # warm-up: the first call builds oneDNN's kernel
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        timings.append(time.perf_counter() - began)
    return sorted(timings)[repeats // 2]


def onednn_is_faster(in_features: int, out_features: int, rows: int = 64) -> bool:
    """Whether oneDNN multiplies ``rows`` tokens by an ``out_features × in_features`` weight faster than the
    default, measured once per process and shape (a few milliseconds)."""
    key = (in_features, out_features)
    if key not in _decided:
        import torch

        with torch.inference_mode():
            x = torch.randn(rows, in_features)
            weight = torch.randn(out_features, in_features)
            default = _seconds(lambda: torch.nn.functional.linear(x, weight))
            onednn = _seconds(lambda: torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], ""))
        _decided[key] = onednn * MARGIN < default
        log.debug("fp32 linear %dx%d: default %.2f ms, oneDNN %.2f ms", out_features, in_features,
                  default * 1e3, onednn * 1e3)  # fmt: skip
    return _decided[key]


def choice() -> str:
    """``RQA_CPU_LINEAR``: ``auto`` (measure), ``onednn`` or ``default``."""
    value = os.environ.get(ENVIRONMENT, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENVIRONMENT} must be one of {', '.join(CHOICES)}, got {value!r}")
    return value


@contextmanager
def onednn_linears(model: Any) -> Iterator[int]:
    """Within the block, the model's eligible linear layers run through oneDNN when that is the faster choice;
    yields how many do. Every layer gets its own ``forward`` back on leaving, whatever happens inside."""
    wanted = choice()
    layers = [m for m in model.modules() if _eligible(m)] if wanted != "default" and _available() else []
    if layers and wanted == "auto":
        largest = max(layers, key=lambda m: m.weight.numel())
        if not onednn_is_faster(largest.in_features, largest.out_features):
            layers = []
    for layer in layers:
        layer.forward = partial(_onednn_forward, layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            vars(layer).pop("forward", None)
