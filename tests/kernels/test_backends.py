"""Kernel backends behind one contract: the name table, "auto", and forcing one by argument, env var or config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from charlit.kernels import (
    BACKEND_ENV_VAR,
    auto_order,
    backend_names,
    default_backend,
    fused_linear_divergence,
    fused_linear_logprobs,
    selection,
    set_default_backend,
)
from charlit.kernels.backends import KERNEL_BACKENDS, YES, Availability, KernelBackend
from charlit.kernels.debug import Plan, record_plan, record_plans

from .helpers import make_div_inputs, rel_err, run_div, run_logprobs

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def clean_defaults(monkeypatch):
    """No env var from the caller's shell; the configured default back to "auto" afterwards."""
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    yield
    set_default_backend("auto")


@pytest.fixture
def counting(monkeypatch):
    """A throwaway backend registered here only (no edit elsewhere): torch's, counting its calls."""
    KERNEL_BACKENDS.names()  # scan first, so the copy below holds the built-ins
    monkeypatch.setattr(KERNEL_BACKENDS, "_plugins", dict(KERNEL_BACKENDS._plugins))
    torch_backend = KERNEL_BACKENDS.get("torch")()

    @KERNEL_BACKENDS.register("counting")
    class Counting:
        calls: list[str] = []
        usable = True

        def available(self, device):
            return YES if Counting.usable else Availability(False, "switched off by the test; use 'torch'")

        def divergence(self, *args):
            Counting.calls.append("divergence")
            return torch_backend.divergence(*args)

        def logprobs(self, *args):
            Counting.calls.append("logprobs")
            return torch_backend.logprobs(*args)

    return Counting


def test_registry_lists_the_builtin_backends():
    assert {"torch", "triton", "triton_rows", "cuda"} <= set(KERNEL_BACKENDS.builtin_names())
    for name in ("torch", "triton", "triton_rows", "cuda"):
        impl = KERNEL_BACKENDS.get(name)()
        assert isinstance(impl, KernelBackend) and impl.name == name
    assert backend_names()[:2] == ["auto", "reference"] and set(KERNEL_BACKENDS.names()) <= set(backend_names())


def test_auto_picks_torch_on_cpu_even_when_triton_could_interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert selection.resolve("auto", CPU).name == "torch"
    with record_plans() as plans:
        fused_linear_logprobs(torch.randn(3, 8), torch.randn(16, 8), torch.tensor([1, 2, 3]))
    assert [(p.op, p.backend) for p in plans] == [("logprobs", "torch")]


def test_auto_takes_the_first_available_in_the_declared_order(monkeypatch, counting):
    monkeypatch.setitem(selection.AUTO_ORDER, "cpu", ("counting", "torch"))
    assert selection.resolve("auto", CPU).name == "counting"
    counting.usable = False
    assert selection.resolve("auto", CPU).name == "torch"
    monkeypatch.setitem(selection.AUTO_ORDER, "cpu", ("counting",))
    with pytest.raises(RuntimeError, match="no kernel backend runs on cpu: counting: switched off by the test"):
        fused_linear_divergence(**make_div_inputs(4, 8, 16))


def test_forced_throwaway_backend_runs_and_matches_float64(counting):
    inputs = make_div_inputs(13, 16, 300, bias=True)
    loss, grads, _ = run_div(inputs, backend="counting", beta=0.3, softcap=5.0)
    ref, rgrads, _ = run_div(inputs, backend="reference", beta=0.3, softcap=5.0)
    assert counting.calls == ["divergence"]
    assert rel_err(loss, ref) <= 1e-5
    for k in rgrads:
        assert rel_err(grads[k], rgrads[k]) <= 1e-5, k
    x, w, y = torch.randn(9, 16), torch.randn(300, 16) / 4, torch.randint(0, 300, (9,))
    out, g = run_logprobs(x, w, y, backend="counting")
    ref, rg = run_logprobs(x, w, y, backend="reference")
    assert counting.calls == ["divergence", "logprobs"]
    assert rel_err(out, ref) <= 1e-5 and rel_err(g["weight"], rg["weight"]) <= 1e-5


def test_config_default_then_env_var_then_argument(monkeypatch, counting):
    inputs = make_div_inputs(6, 8, 40)
    ref = fused_linear_divergence(**inputs, backend="reference")
    assert ref.dtype == torch.float64 and default_backend() == "auto"

    set_default_backend("counting")
    assert default_backend() == "counting"
    assert rel_err(fused_linear_divergence(**inputs), ref) <= 1e-5
    assert counting.calls == ["divergence"]

    monkeypatch.setenv(BACKEND_ENV_VAR, "reference")  # the env var beats the config
    assert default_backend() == "reference"
    assert torch.equal(fused_linear_divergence(**inputs), ref)

    out = fused_linear_divergence(**inputs, backend="torch")  # the argument beats both
    assert out.dtype == torch.float32 and rel_err(out, ref) <= 1e-5
    assert counting.calls == ["divergence"]


def test_unknown_names_are_rejected_listing_the_valid_ones(monkeypatch):
    listed = "'auto', 'reference', 'cuda', 'torch', 'triton'"
    with pytest.raises(ValueError, match=f"set_default_backend\\(name\\)='tpu' is not a kernel backend.*{listed}"):
        set_default_backend("tpu")
    assert default_backend() == "auto"  # a rejected name leaves the default alone
    monkeypatch.setenv(BACKEND_ENV_VAR, "tpu")
    with pytest.raises(ValueError, match=f"{BACKEND_ENV_VAR}='tpu' is not a kernel backend.*{listed}"):
        fused_linear_divergence(**make_div_inputs(4, 8, 16))
    with pytest.raises(ValueError, match="charlit.kernel_backends"):
        default_backend()


def test_forced_but_unavailable_backend_says_why_and_the_fix(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv(BACKEND_ENV_VAR, "triton")
    with pytest.raises(
        RuntimeError,
        match=r"'triton' \(chosen by \$CHARLIT_KERNEL_BACKEND\) cannot run on cpu.*TRITON_INTERPRET=1.*backend='torch'",
    ):
        fused_linear_divergence(**make_div_inputs(4, 8, 16))
    with pytest.raises(RuntimeError, match="'cuda' .*backend=.*CUDA tensors"):
        fused_linear_logprobs(torch.randn(3, 8), torch.randn(16, 8), torch.tensor([1, 2, 3]), backend="cuda")


def test_plans_are_recorded_only_inside_blocks_and_reach_nested_ones():
    plan = Plan("logprobs", "test", 1, 2, 1, False)
    record_plan(plan)
    with record_plans() as outer:
        with record_plans() as inner:
            record_plan(plan)
        record_plan(plan)
    record_plan(plan)
    assert (len(outer), len(inner)) == (2, 1)


def test_scanning_the_backends_needs_no_triton():
    """Without triton importable, the table still lists every backend and "auto" still runs on CPU."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from charlit.kernels import backend_names, fused_linear_logprobs\n"
        "from charlit.kernels.backends import KERNEL_BACKENDS\n"
        "assert {'torch', 'triton', 'cuda'} <= set(backend_names())\n"
        "print(KERNEL_BACKENDS.get('triton')().available(torch.device('cpu')).reason)\n"
        "fused_linear_logprobs(torch.randn(3, 8), torch.randn(16, 8), torch.tensor([1, 2, 3]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "`triton` package is not installed" in res.stdout


def test_shipped_table_measures_no_gpu_yet_and_cpu_keeps_its_order():
    """Until a GPU check is installed, "auto" on every GPU class is the declared order; CPU never reads the table."""
    assert auto_order.measured_classes() == {}
    declared = ("triton", "cuda", "torch")
    assert selection.auto_candidates(torch.device("cuda")) == selection.AUTO_ORDER["cuda"] == declared
    assert selection.auto_candidates(CPU) == ("torch",)


@pytest.fixture
def measured_table(monkeypatch, tmp_path):
    """A table on disk in place of the shipped one."""
    path = tmp_path / "auto_order.json"
    monkeypatch.setattr(auto_order, "TABLE_PATH", path)
    return path


def test_auto_tries_the_measured_gpu_order_first(monkeypatch, counting, measured_table):
    measured_table.write_text(json.dumps({"classes": {"cuda-sm90": {"order": ["counting", "torch"]}}}))
    monkeypatch.setattr(auto_order, "device_class", lambda device: "cuda-sm90")
    gpu = torch.device("cuda")
    assert selection.auto_candidates(gpu) == ("counting", "torch", "triton", "cuda")
    assert selection.resolve("auto", gpu).name == "counting"
    counting.usable = False
    assert selection.resolve("auto", gpu).name == "torch"
    assert selection.auto_candidates(CPU) == ("torch",)  # a GPU measurement never moves the CPU order


def test_install_merges_gpu_classes_and_refuses_dry_runs(measured_table, tmp_path):
    result = tmp_path / "result.json"
    entry = {"order": ["triton_rows", "cuda", "triton", "torch"], "device": "NVIDIA H200"}
    result.write_text(json.dumps({"dry_run": False, "classes": {"cuda-sm90": entry}}))
    assert auto_order.install(result, measured_table) == ["cuda-sm90"]
    assert auto_order.measured_classes(measured_table) == {"cuda-sm90": ("triton_rows", "cuda", "triton", "torch")}
    result.write_text(json.dumps({"dry_run": True, "classes": {"cpu": {"order": ["triton_rows"]}}}))
    with pytest.raises(ValueError, match="--dry-run"):
        auto_order.install(result, measured_table)
    result.write_text(json.dumps({"dry_run": False, "classes": {"cpu": {"order": ["triton_rows"]}}}))
    with pytest.raises(ValueError, match="no GPU class.*CPU order stays"):
        auto_order.install(result, measured_table)
    measured_table.write_text(json.dumps({"classes": {"cuda-sm90": {"order": "triton_rows"}}}))
    with pytest.raises(ValueError, match=r"classes\['cuda-sm90'\].order must be a non-empty list"):
        auto_order.measured_classes(measured_table)


def test_rank_is_by_geometric_mean_of_floor_ratios():
    assert auto_order.rank({"a": [1.2, 1.2], "b": [1.0, 2.0], "c": [1.1, 1.5], "d": []}) == ["a", "c", "b"]
