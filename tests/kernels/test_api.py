"""Argument validation and dispatch of the public ops."""

from __future__ import annotations

import pytest
import torch

from charlit.kernels import fused_linear_divergence, fused_linear_logprobs
from charlit.kernels.debug import record_plans

from .helpers import make_div_inputs


def test_unknown_backend_lists_valid_ones():
    inputs = make_div_inputs(4, 8, 16)
    with pytest.raises(ValueError, match="backend='tpu'.*'auto', 'reference', 'cuda', 'torch', 'triton'"):
        fused_linear_divergence(**inputs, backend="tpu")
    with pytest.raises(ValueError, match="valid backends"):
        fused_linear_logprobs(torch.randn(3, 8), torch.randn(16, 8), torch.zeros(3, dtype=torch.long), backend="x")


def test_teacher_vocab_smaller_than_student_is_rejected():
    inputs = make_div_inputs(4, 8, 16, vt=12)
    with pytest.raises(ValueError, match=r"teacher vocabulary \(12 rows.*student_weight\[:12\]"):
        fused_linear_divergence(**inputs)


def test_hidden_size_mismatch_is_rejected():
    inputs = make_div_inputs(4, 8, 16)
    inputs["teacher_hidden"] = torch.randn(4, 9)
    with pytest.raises(ValueError, match=r"teacher_hidden has shape \(4, 9\).*weight.shape\[1\]=8"):
        fused_linear_divergence(**inputs)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(beta=1.5), "beta must lie in"),
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(softcap=-1.0), "softcap must be > 0"),
        (dict(reduction="avg"), "reduction must be one of"),
        (dict(reduction="sum", num_items=3), "num_items only applies"),
        (dict(mask=torch.ones(5, dtype=torch.bool)), r"mask has shape \(5,\)"),
        (dict(mask=torch.ones(4)), "mask has dtype torch.float32"),
    ],
)
def test_bad_arguments(kw, msg):
    inputs = make_div_inputs(4, 8, 16)
    with pytest.raises(ValueError, match=msg):
        fused_linear_divergence(**inputs, **kw)


def test_logprobs_target_out_of_range():
    with pytest.raises(ValueError, match=r"outside \[0, 16\)"):
        fused_linear_logprobs(torch.randn(3, 8), torch.randn(16, 8), torch.tensor([0, 16, -100]))


def test_auto_uses_torch_on_cpu():
    inputs = make_div_inputs(6, 8, 40)
    with record_plans() as plans:
        fused_linear_divergence(**inputs)
    assert [(p.op, p.backend, p.rows) for p in plans] == [("divergence", "torch", 6)]


def test_triton_on_cpu_without_interpreter_explains(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    inputs = make_div_inputs(4, 8, 16)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        fused_linear_divergence(**inputs, backend="triton")
