"""Generation backends behind one interface (``sampler=hf`` on CPU; room for vLLM on GPUs)."""
from charlit.sampling.base import Sampler, SamplingParams, build_sampler

__all__ = ["Sampler", "SamplingParams", "build_sampler"]
