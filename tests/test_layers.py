"""Layers only point down: nothing under models, kernels, data, sampling or teachers imports the objectives or the
evaluation (each package's modules are imported one by one in a fresh interpreter, which is checked after each)."""

import pkgutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

LOWER = ("charlit.models", "charlit.kernels", "charlit.data", "charlit.sampling", "charlit.teachers")
UPPER = ("charlit.objectives", "charlit.eval")
CHECK = f"""
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
    upper = sorted(m for m in sys.modules if m.startswith({UPPER!r}))
    assert not upper, f"{{name}} imports {{upper}}"
"""


def _modules(package: str) -> list[str]:
    path = REPO / package.replace(".", "/")
    return [package] + [m.name for m in pkgutil.walk_packages([str(path)], prefix=package + ".")]


@pytest.mark.parametrize("package", LOWER)
def test_lower_layers_do_not_import_objectives_or_eval(package):
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, *_modules(package)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
