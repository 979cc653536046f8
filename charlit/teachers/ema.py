"""An exponential moving average of the policy's trainable parameters, for the ``ema`` teacher weights.

Only parameters with ``requires_grad`` get a shadow copy, so with LoRA only the adapter is averaged (the
frozen base is shared). After every optimizer step ``update()`` sets ``ema ← decay·ema + (1−decay)·param``;
``swapped()`` points the parameters at the shadow tensors (no copy: ``param.data`` is exchanged) for a
no-grad teacher forward and restores them afterwards. Shadows keep the parameter's dtype and follow it
across devices.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class EmaWeights:
    def __init__(self, policy: torch.nn.Module, decay: float):
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"method.ema_decay={decay} must be in [0, 1) (e.g. 0.99); 1 would never move the teacher.")
        self.decay = float(decay)
        self.params = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("teacher_weights=ema needs trainable parameters, but the policy has none.")
        self.shadow = [p.detach().clone() for _, p in self.params]

    def _sync_device(self) -> None:
        for i, (_, p) in enumerate(self.params):
            if self.shadow[i].device != p.device:
                self.shadow[i] = self.shadow[i].to(p.device)

    @torch.no_grad()
    def update(self) -> None:
        self._sync_device()
        for s, (_, p) in zip(self.shadow, self.params):
            s.mul_(self.decay).add_(p.detach().to(s.dtype), alpha=1.0 - self.decay)

    @contextmanager
    def swapped(self):
        """Within the block the policy's trainable parameters hold the EMA values (use under no_grad)."""
        self._sync_device()
        saved = []
        try:
            for s, (_, p) in zip(self.shadow, self.params):
                saved.append(p.data)
                p.data = s
            yield
        finally:
            for data, (_, p) in zip(saved, self.params):
                p.data = data

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {n: s.detach().cpu() for s, (n, _) in zip(self.shadow, self.params)}}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        missing = [n for n, _ in self.params if n not in shadow]
        if missing:
            raise ValueError(
                f"The checkpoint's EMA teacher lacks {len(missing)} parameters (first: {missing[0]}); "
                "it was saved with a different model or LoRA setting."
            )
        self.shadow = [shadow[n].to(device=p.device, dtype=p.dtype) for n, p in self.params]
