"""fp32 linear layers through oneDNN during CPU generation: same numbers within fp32 rounding, always undone."""

from __future__ import annotations

import pytest
import torch
from helpers import embedded_tokenizer, tiny_model

from rqa import onednn
from rqa.onednn import onednn_linears

pytestmark = pytest.mark.skipif(not onednn._available(), reason="this PyTorch has no oneDNN linear kernel")


def linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


def test_forced_onednn_routes_every_linear_and_gives_the_same_logits(monkeypatch) -> None:
    monkeypatch.setenv(onednn.ENVIRONMENT, "onednn")
    model = tiny_model(embedded_tokenizer(), seed=1).eval()
    ids = torch.randint(0, 1000, (2, 17))
    calls: list[int] = []
    original = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(onednn, "_onednn_forward", lambda module, x: calls.append(1) or original(
        x, module.weight, module.bias, "none", [], ""))  # fmt: skip
    with torch.inference_mode():
        expected = model(ids).logits
        with onednn_linears(model) as routed:
            logits = model(ids).logits
    assert routed == len(linears(model)) > 0
    assert len(calls) == routed  # each layer ran once, through oneDNN
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert all("forward" not in vars(m) for m in linears(model))


def test_layers_get_their_forward_back_when_the_block_fails(monkeypatch) -> None:
    monkeypatch.setenv(onednn.ENVIRONMENT, "onednn")
    model = tiny_model(embedded_tokenizer())
    with pytest.raises(RuntimeError, match="stop"), onednn_linears(model):
        assert all("forward" in vars(m) for m in linears(model))
        raise RuntimeError("stop")
    assert all("forward" not in vars(m) for m in linears(model))


def test_default_keeps_the_usual_kernels_and_other_layers_are_left_alone(monkeypatch) -> None:
    model = tiny_model(embedded_tokenizer())
    monkeypatch.setenv(onednn.ENVIRONMENT, "default")
    with onednn_linears(model) as routed:
        assert routed == 0
    monkeypatch.setenv(onednn.ENVIRONMENT, "onednn")
    first, second, *rest = linears(model)
    first.to(torch.bfloat16)  # not fp32
    hooked = second.forward
    second.forward = hooked  # a forward someone else replaced (accelerate's hooks do)
    with onednn_linears(model) as routed:
        assert routed == len(rest)
        assert first.forward.__func__ is torch.nn.Linear.forward and second.forward is hooked
    assert second.forward is hooked  # theirs, kept


def test_an_unknown_setting_names_the_valid_ones(monkeypatch) -> None:
    monkeypatch.setenv(onednn.ENVIRONMENT, "mkl")
    with pytest.raises(ValueError, match="auto, onednn, default"), onednn_linears(tiny_model(embedded_tokenizer())):
        pass


def test_auto_measures_once_per_shape(monkeypatch) -> None:
    monkeypatch.setattr(onednn, "_decided", {})
    timed: list[int] = []
    real = onednn._seconds
    monkeypatch.setattr(onednn, "_seconds", lambda run: timed.append(1) or real(run, repeats=1))
    first = onednn.onednn_is_faster(48, 96)
    assert onednn.onednn_is_faster(48, 96) is first and len(timed) == 2  # one default and one oneDNN timing
    onednn.onednn_is_faster(96, 48)
    assert len(timed) == 4


def test_under_cpu_autocast_the_layers_compute_as_autocast_does(monkeypatch) -> None:
    """A model trained with --bf16 generates inside accelerate's autocast wrapper: oneDNN's op is not cast by
    autocast, so a bf16 activation met an fp32 weight and the test evaluation failed after training."""
    monkeypatch.setenv(onednn.ENVIRONMENT, "onednn")
    model = tiny_model(embedded_tokenizer(), seed=1).eval()
    ids = torch.randint(0, 1000, (2, 17))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(ids).logits
        with onednn_linears(model) as routed:
            logits = model(ids).logits
    assert routed > 0
    assert logits.dtype == expected.dtype
    torch.testing.assert_close(logits, expected)


def test_an_input_of_another_dtype_takes_the_usual_product(monkeypatch) -> None:
    monkeypatch.setenv(onednn.ENVIRONMENT, "onednn")
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8, dtype=torch.float64)
    with onednn_linears(layer) as routed, pytest.raises(RuntimeError, match="dtype"):
        assert routed == 1
        layer(x)  # what nn.Linear itself says of a float64 input and fp32 weight, not a oneDNN failure
