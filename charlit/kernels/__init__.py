"""Fused large-vocabulary losses: linear layer + divergence / log-probs without [N, V] logits.

``fused_linear_divergence`` and ``fused_linear_logprobs`` take hidden states and the lm_head
weight. Backends ("torch" chunked, "triton", "triton_rows", "cuda"; see ``charlit.kernels.backends``) meet
one contract and are chosen by name: the ops' ``backend=`` argument, else ``$CHARLIT_KERNEL_BACKEND``,
else ``set_default_backend`` (from config), else "auto" (first available of the order measured for the GPU
class, ``auto_order``, then ``selection.AUTO_ORDER`` per device type). "reference" runs the float64
materialised ground truth.

``fused_linear_topk_divergence`` trains against a sparse teacher (top-k ids and log-probs plus the log of the
left-over mass, as ``topk_teacher`` computes them for an offline cache); plain chunked PyTorch, any device.
"""

from .api import fused_linear_divergence, fused_linear_logprobs
from .selection import BACKEND_ENV_VAR, backend_names, default_backend, set_default_backend
from .topk_teacher import fused_linear_topk_divergence, topk_teacher

__all__ = [
    "fused_linear_divergence",
    "fused_linear_logprobs",
    "fused_linear_topk_divergence",
    "topk_teacher",
    "BACKEND_ENV_VAR",
    "backend_names",
    "default_backend",
    "set_default_backend",
]
