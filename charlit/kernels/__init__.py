"""Fused large-vocabulary losses: linear layer + divergence / log-probs without [N, V] logits.

``fused_linear_divergence`` and ``fused_linear_logprobs`` take hidden states and the lm_head
weight; backends ("torch" chunked, "triton", "cuda", float64 "reference") sit behind one
dispatcher (``backend="auto"``: triton on CUDA tensors, torch on CPU).
"""
from ._validate import BACKENDS
from .api import fused_linear_divergence, fused_linear_logprobs

__all__ = ["fused_linear_divergence", "fused_linear_logprobs", "BACKENDS"]
