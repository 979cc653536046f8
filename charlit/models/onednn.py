"""fp32 CPU linear layers through oneDNN's kernel instead of torch's default BLAS call.

Torch's fp32 CPU matmul goes to MKL, which on this project's AMD EPYC runs at about half of oneDNN's speed
(MKL does not pick its AVX-512 paths on non-Intel processors). ``mkldnn::_linear_pointwise`` (the op torch's
inductor emits for CPU linears) takes and returns ordinary dense tensors, so it needs neither a weight copy
nor per-call layout conversions (``torch.utils.mkldnn.MkldnnLinear`` spends ~30 µs a call on those).
Measured on the 2-core EPYC, µs per call, default → oneDNN:

* decoding, 4 rows: SmolLM2's 576→576 projection 61 → 38, 576→1536 168 → 71, 1536→576 152 → 76, the
  576→49152 lm_head 15400 → 6000;
* training, 350 rows: 576→1536 forward 3544 → 1637; its input gradient 5890 → 2972, weight gradient
  6125 → 3979 (ratios hold at 2048 rows).

Results agree to fp32 rounding (summation order). :func:`accelerate` routes a model's layers through
:func:`linear` for training and scoring (differentiable; module tree and state dict unchanged);
:func:`swapped_in` swaps them for a decoding call. Elsewhere (GPU, half precision) ``F.linear`` runs.

Those figures are one processor's: on an Intel Sapphire Rapids both paths ran the 350x576->1536 product in the same
5.7 ms. So ``model.onednn_linear=auto`` (the default) decides per machine: :func:`calibrate` times the model's own
linear shapes both ways (decode- and training-sized rows) and keeps oneDNN only where it is faster
(:mod:`charlit.calibration`, cached per CPU model, threads and shapes); ``true``/``false`` force a path.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F

CALIBRATION_ROWS = (4, 64)  # a decoding step's rows and a training/scoring tile's
ACTIVE_ATTR = "_charlit_onednn"


def _op_available() -> bool:
    """A oneDNN-enabled torch that has the dense-in/dense-out linear op."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _fp32_cpu(t: torch.Tensor) -> bool:
    return t.dtype == torch.float32 and t.device.type == "cpu"


def fp32_cpu_model(model) -> bool:
    """The model's weights are fp32 on the CPU (judged by its first parameter)."""
    param = next(model.parameters(), None)
    return param is not None and _fp32_cpu(param)


def supported(model) -> bool:
    """fp32 on CPU, and the op is available."""
    return fp32_cpu_model(model) and _op_available()


def active(model) -> bool:
    """Whether decoding should swap ``model``'s layers to oneDNN: supported, and not turned off for it by
    :func:`set_active` (``model.onednn_linear`` or its calibration)."""
    return supported(model) and getattr(model, ACTIVE_ATTR, True)


def set_active(model, on: bool) -> None:
    setattr(model, ACTIVE_ATTR, bool(on))


def _linears(model) -> dict[tuple[int, int], torch.nn.Linear]:
    """One fp32 CPU ``nn.Linear`` per distinct (in, out) shape."""
    found = {}
    for module in model.modules():
        if type(module) is torch.nn.Linear and _fp32_cpu(module.weight):
            found.setdefault((module.in_features, module.out_features), module)
    return found


def calibrate(model, path=None) -> tuple[bool, dict]:
    """``(use oneDNN, record)``: time the model's own linear shapes through oneDNN and through ``F.linear`` (forward,
    at :data:`CALIBRATION_ROWS` rows) and keep oneDNN only when it is faster on this machine."""
    from charlit.calibration import calibrated_choice

    layers = _linears(model)
    if not layers or not _op_available():
        return False, {"choice": "torch", "seconds": {}, "cached": False}
    generator = torch.Generator().manual_seed(0)
    inputs = {
        (rows, n_in): torch.randn(rows, n_in, generator=generator) for rows in CALIBRATION_ROWS for n_in, _ in layers
    }

    def run(fn):
        def go() -> None:
            with torch.no_grad():
                for rows in CALIBRATION_ROWS:
                    for (n_in, _), layer in layers.items():
                        fn(inputs[rows, n_in], layer.weight, layer.bias)

        return go

    shapes = {"linear": sorted(list(s) for s in layers), "rows": list(CALIBRATION_ROWS)}
    choice, record = calibrated_choice(
        "onednn_linear", shapes, {"onednn": run(_dense), "torch": run(F.linear)}, default="torch", repeats=3, path=path
    )
    return choice == "onednn", record


def _dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _LinearFn(torch.autograd.Function):
    """``x Wᵀ + b`` with every product through oneDNN: dX = dY W (W's transpose as a view), dW = dYᵀ X."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
        return _dense(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        flat = dy.reshape(-1, dy.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _dense(flat, weight.t(), None).view(*dy.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            dw = _dense(flat.t().contiguous(), x.reshape(-1, x.shape[-1]).t().contiguous(), None)
        if ctx.needs_input_grad[2]:  # False when there is no bias
            db = flat.sum(dim=0)
        return dx, dw, db


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` through oneDNN for fp32 CPU tensors (differentiable in x, weight and bias). Under CPU autocast
    (``trainer.precision=bf16-mixed``) ``F.linear`` runs instead, so the product is autocast's lower precision."""
    if torch.is_autocast_enabled("cpu") or not (
        _fp32_cpu(x) and _fp32_cpu(weight) and (bias is None or _fp32_cpu(bias))
    ):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return _LinearFn.apply(x, weight, bias)
    return _dense(x, weight, bias)


def _accelerated_forward(self, x):
    return linear(x, self.weight, self.bias)


def accelerate(model) -> int:
    """Route every ``nn.Linear`` of ``model`` through :func:`linear` (a per-instance ``forward``: parameters,
    module names and the state dict stay as they are). Returns how many layers; 0 when oneDNN is missing."""
    if not _op_available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.forward = types.MethodType(_accelerated_forward, module)
            count += 1
    return count


class OneDnnLinear(torch.nn.Module):
    """``linear``'s product through oneDNN, reading its current weight (no copy)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.linear = linear

    @property
    def weight(self) -> torch.Tensor:  # a drop-in for code that reads the layer's parameters (peft does)
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.linear.weight, self.linear.bias)


@contextmanager
def swapped_in(model):
    """Within the block, every fp32 CPU ``nn.Linear`` of ``model`` runs through oneDNN."""
    swaps = []
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear and _fp32_cpu(child.weight):
                    swaps.append((parent, name, child))
                    setattr(parent, name, OneDnnLinear(child))
        yield model
    finally:
        for parent, name, child in reversed(swaps):
            setattr(parent, name, child)
