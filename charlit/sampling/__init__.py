"""Generation backends behind one interface: ``sampler=hf`` (CPU or GPU) and ``sampler=vllm`` (GPU, fixed weights)."""

from charlit.sampling.base import SAMPLERS, Sampler, SamplerSettings, SamplingParams, build_sampler, sampler_settings

__all__ = ["SAMPLERS", "Sampler", "SamplerSettings", "SamplingParams", "build_sampler", "sampler_settings"]
