"""Sampled replies cached on disk, keyed by everything that determines them.

A key hashes the model's weights identity, the exact rendered contexts (so the system prompt and the
prompts), the sampling parameters and the seed. The bare base model's replies do not depend on the
persona, so evaluating six personas (or the same base twice) samples them once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from charlit.models.bundled import cache_root
from charlit.sampling import SamplingParams


def weights_identity(model: torch.nn.Module) -> str:
    """SHA-256 over parameter names, dtypes, shapes and bytes: two models generate alike iff this matches."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return cache_root() / "generations"


class GenerationCache:
    """``generate`` through a sampler, reading and writing ``<dir>/<key>.json`` (``directory=None`` disables it)."""

    def __init__(self, sampler, params: SamplingParams, directory: Path | None):
        self.sampler, self.params = sampler, params
        self.directory = Path(directory) if directory is not None else None
        self.hits = self.misses = 0

    def key(self, model_id: str, contexts: list[list[int]], seed: int) -> str:
        payload = json.dumps(
            {
                "model": model_id,
                "contexts": contexts,
                "params": asdict(self.params),
                "seed": seed,
                "sampler": type(self.sampler).__name__,
            }
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def generate(
        self, model, model_id: str, contexts: list[list[int]], seed: int, desc: str | None = None
    ) -> list[list[int]]:
        path = self.directory / f"{self.key(model_id, contexts, seed)}.json" if self.directory is not None else None
        if path is not None and path.is_file():
            self.hits += 1
            return json.loads(path.read_text())
        self.misses += 1
        replies = self.sampler.generate(model, contexts, self.params, seed=seed, desc=desc)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".gen-")
            with os.fdopen(fd, "w") as fh:
                json.dump(replies, fh)
            os.replace(tmp, path)
        return replies
