"""Every ``torch.load`` in the package passes ``weights_only=True``: torch < 2.6 unpickles arbitrary code by
default, and charlit allows torch >= 2.4. A cache file planted by someone else must never run code (the
classifier judge's cache, the one such file today, is tested in ``tests/eval/test_judges.py``)."""

import ast
from pathlib import Path

import charlit

PACKAGE = Path(charlit.__file__).parent


def _unsafe_torch_loads(tree: ast.AST) -> list[int]:
    """Line numbers of ``torch.load(...)`` calls without a literal ``weights_only=True``."""
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"):
            continue
        if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            continue
        safe = any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
        if not safe:
            lines.append(node.lineno)
    return lines


def test_every_torch_load_in_the_package_is_weights_only():
    unsafe = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := _unsafe_torch_loads(ast.parse(path.read_text(), str(path))))
    }
    assert not unsafe, f"torch.load without weights_only=True (add it): {unsafe}"


def test_the_scan_catches_an_unsafe_call():
    tree = ast.parse(
        "import torch\nx = torch.load(p)\ny = torch.load(p, weights_only=False)\nz = torch.load(p, weights_only=True)\n"
    )
    assert _unsafe_torch_loads(tree) == [2, 3]
