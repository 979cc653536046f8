"""The training command prints only what a user needs, and none of charlit's own calls is deprecated.

Each test runs the documented tiny command (``python train.py method=<m> model=tiny ...``) in a subprocess
through the harness at the bottom of this file, which records every ``DeprecationWarning`` / ``FutureWarning``
(and every "deprecated" message of the ``transformers`` logger) together with the call stack that raised it.
A deprecation counts as charlit's when the first frame outward from where it was raised that is not plumbing
(the raising package itself, the standard library, ``torch.nn.Module.__call__``, a model ``forward`` /
``generate`` passing arguments through) lies in ``charlit/`` or ``train.py``.  The warning's printed location is
no help here: ``transformers`` attributes a deprecated ``forward`` argument to ``torch/nn/modules/module.py``.
So a deprecated call *in our code* fails this test, while a library's own use of another library's deprecated
API (Lightning building a ``torch`` ``LeafSpec``, peft reading ``is_gradient_checkpointing``) does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FAST = [
    "model=tiny",
    "trainer.max_steps=2",
    "logger=csv",
    "sampler.max_new_tokens=6",
    "data.val_size=2",
    "data.batch_size=2",
]
NOISE = (
    "Total FLOPs",
    "modules in eval mode",
    "module(s) in eval mode",
    "Modules in train mode",
    "litlogger",
    "GPU available",
    "Trainable params",
)


def _run(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    report = tmp_path / "deprecations.json"
    cmd = [sys.executable, __file__, str(report), *overrides, *FAST, f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # what an unconfigured interpreter shows, not pytest's filters
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(report.read_text())


def _check_quiet(proc, found: list[dict]) -> None:
    ours = [f for f in found if f["charlit_call"]]
    assert not ours, "deprecated APIs called from charlit:\n" + "\n".join(
        f"{f['category']}: {f['message']}\n    at {f['charlit_call']}" for f in ours
    )
    text = proc.stdout + proc.stderr
    for line in text.splitlines():
        assert not any(n.lower() in line.lower() for n in NOISE), f"noise in the output: {line!r}"
    assert "[charlit] summary:" in proc.stdout


@pytest.mark.parametrize(
    "method,extra",
    [
        ("self_distill", ()),  # the default run; sft and dpo (~16 s each) under `make test-slow`
        pytest.param("sft", (), marks=pytest.mark.slow),
        pytest.param("dpo", ("data.path=bundled",), marks=pytest.mark.slow),
    ],
)
def test_tiny_run_is_quiet_and_calls_no_deprecated_api(tmp_path, method, extra):
    proc, found = _run(tmp_path, f"method={method}", *extra)
    _check_quiet(proc, found)
    assert "[charlit] training:" in proc.stdout  # the one line that replaces Lightning's summary table


def test_pretrained_policy_trains_without_an_eval_mode_warning(tmp_path, monkeypatch):
    """``from_pretrained`` returns a model in eval mode; it must be in train mode before Lightning's fit loop
    checks (it warns "Found N module(s) in eval mode at the start of training" otherwise)."""
    import warnings

    import charlit.run as run
    from tests.conftest import compose

    load_model = run.load_model

    def load_pretrained_like(cfg):
        loaded = load_model(cfg)
        loaded.model.eval()
        return loaded

    monkeypatch.setattr(run, "load_model", load_pretrained_like)
    cfg = compose(
        [
            "method=sft",
            "model=tiny",
            "trainer.max_steps=1",
            "logger=none",
            "val.every_n_steps=0",
            "data.batch_size=2",
            "output.save_final=false",
        ]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.train(cfg, tmp_path, reuse_finished=False)
    assert not [str(w.message) for w in caught if "eval mode" in str(w.message)]


def test_progress_off_a_terminal_is_a_line_every_interval_and_nested_phases_are_silent(monkeypatch, capsys):
    from types import SimpleNamespace

    from charlit import progress

    clock = [0.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(progress, "interactive", lambda: False)
    monkeypatch.setenv("CHARLIT_PROGRESS_EVERY", "10")

    def ticking(n):
        for i in range(n):
            clock[0] += 20
            yield i

    with progress.Progress(4, "phase", unit="batch") as bar:
        for _ in range(4):
            clock[0] += 6
            assert list(progress.progress(ticking(2), "inner", total=2)) == [0, 1]  # inside a phase: silent
            bar.update()
    for _ in progress.progress(range(3), "short"):  # shorter than the interval: nothing
        pass
    assert capsys.readouterr().out.splitlines() == [
        "[charlit] phase: 1/4 batches (25%), 46 s, ~2 min 18 s left",
        "[charlit] phase: 2/4 batches (50%), 1 min 32 s, ~1 min 32 s left",
        "[charlit] phase: 3/4 batches (75%), 2 min 18 s, ~46 s left",
        "[charlit] phase: 4/4 batches (100%), 3 min 04 s (done)",  # the end, not a periodic line at 100%
    ]


def test_harness_attributes_a_deprecated_call_to_charlit():
    """The attribution rule on a synthetic stack: a deprecated forward argument passed by charlit through
    ``nn.Module.__call__`` is charlit's; the same warning reached through Lightning's own code is not."""
    site = ("/x/site-packages/transformers/utils/deprecation.py", "wrapped_func")
    torch_call = ("/x/site-packages/torch/nn/modules/module.py", "_call_impl")
    ours = str(REPO / "charlit" / "sampling" / "decode.py")
    assert _charlit_call([(ours, "sample", 61), (*torch_call, 1), (*site, 1)]) == f"{ours}:61 in sample"
    lightning = ("/x/site-packages/lightning/pytorch/utilities/_pytree.py", "_tree_flatten", 21)
    leaf_spec = ("/x/site-packages/typing_extensions.py", "__new__", 1)
    assert _charlit_call([(ours, "train", 1), lightning, leaf_spec]) is None


# ---- the harness: python tests/test_quiet.py REPORT.json <train.py overrides> ----------------------------------


def _package(filename: str) -> str:
    path = Path(filename)
    if path == REPO / "train.py" or REPO / "charlit" in path.parents:
        return "charlit"
    parts = path.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            rest = parts[parts.index(marker) + 1 :]
            return Path(rest[0]).stem if rest else marker
    if filename.startswith("<") or str(path).startswith(sys.base_prefix):
        return "stdlib"
    return "other"


def _charlit_call(stack: list[tuple[str, str, int]]) -> str | None:
    """``file:line in function`` of the charlit frame that made the deprecated call, or None when the first
    non-plumbing frame outward from the raising one is not charlit's; ``stack`` runs outermost → raising frame."""
    site = _package(stack[-1][0])
    for filename, function, lineno in reversed(stack[:-1]):
        package = _package(filename)
        if package == "charlit":
            return f"{filename}:{lineno} in {function}"
        plumbing = package in (site, "stdlib") or function in (
            "forward",
            "generate",
            "_call_impl",
            "_wrapped_call_impl",
            "decorate_context",
            "wrapped_func",
        )
        if not plumbing:
            return None
    return None


def _harness(report: Path, overrides: list[str]) -> None:
    import atexit
    import logging
    import runpy
    import traceback
    import warnings

    found: list[dict] = []

    def record(category: str, message: str, frame) -> None:
        stack = [(f.filename, f.name, f.lineno) for f in traceback.extract_stack(frame)]
        stack = [s for s in stack if s[0] != __file__]
        if stack:
            found.append(
                {
                    "category": category,
                    "message": message[:300],
                    "raised_at": f"{stack[-1][0]}:{stack[-1][2]}",
                    "charlit_call": _charlit_call(stack),
                }
            )

    original = warnings.warn

    def warn(message, category=None, stacklevel=1, source=None, **kwargs):
        cat = category or (type(message) if isinstance(message, Warning) else UserWarning)
        if issubclass(cat, (DeprecationWarning, FutureWarning)):
            record(cat.__name__, str(message), sys._getframe(1))
        return original(message, category, stacklevel + 1, source, **kwargs)

    class DeprecationLog(logging.Handler):
        def emit(self, rec):
            if "deprecat" in rec.getMessage().lower():
                frame = sys._getframe(1)
                while frame is not None and _package(frame.f_code.co_filename) == "stdlib":
                    frame = frame.f_back  # out of the logging module
                record("log:" + rec.name, rec.getMessage(), frame)

    warnings.warn = warn
    logging.getLogger("transformers").addHandler(DeprecationLog(logging.WARNING))
    atexit.register(lambda: report.write_text(json.dumps(found, indent=1)))
    sys.argv = [str(REPO / "train.py"), *overrides]
    # `python train.py` puts the repo root first on sys.path; running this file as a script put tests/ there,
    # where tests/kernels would shadow the `kernels` package that transformers imports.
    sys.path[0] = str(REPO)
    runpy.run_path(str(REPO / "train.py"), run_name="__main__")


if __name__ == "__main__":
    _harness(Path(sys.argv[1]), sys.argv[2:])
