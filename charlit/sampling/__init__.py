"""Generation backends behind one interface: ``sampler=hf`` (CPU or GPU) and ``sampler=vllm`` (GPU, fixed weights)."""
from charlit.sampling.base import Sampler, SamplingParams, build_sampler

__all__ = ["Sampler", "SamplingParams", "build_sampler"]
