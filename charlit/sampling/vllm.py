"""vLLM generation backend (GPU) behind the same :class:`Sampler` interface as ``sampler=hf``.

It serves fixed weights loaded from disk — the data pipeline's generators — and refuses a model that is being
trained (on-policy methods sample from weights that change every step; use ``sampler=hf`` for those).
Untested on hardware here: this machine has no GPU and vLLM is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from charlit.sampling.base import SAMPLERS, Sampler, SamplerSettings, SamplingParams
from charlit.sampling.hf import end_token_ids, trim_response
from charlit.settings import setting

INSTALL_HINT = (
    "sampler=vllm needs vLLM, which is not installed: `pip install vllm` on a machine with a CUDA GPU, "
    "or use sampler=hf"
)


def import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err}).") from err
    return vllm


def model_directory(model) -> str:
    """The directory ``model``'s weights were loaded from; vLLM loads its own copy from there."""
    if any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "sampler=vllm only serves fixed weights (the data pipeline); this model is being trained, "
            "so its weights change every step: use sampler=hf for on-policy sampling."
        )
    path = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    if not path or not Path(path).is_dir():
        raise ValueError(
            f"sampler=vllm needs a model saved on disk (a Hugging Face directory), got {path!r} "
            f"(model=tiny exists only in memory): use sampler=hf."
        )
    return path


@SAMPLERS.register("vllm")
class VLLMSampler(Sampler):
    @dataclass
    class Config(SamplerSettings):
        gpu_memory_utilization: float = setting(0.5, gt=0, le=1)
        dtype: str = setting("auto", choices=("auto", "float16", "bfloat16", "float32"))

    @classmethod
    def from_config(cls, config, tokenizer):
        return cls(tokenizer, gpu_memory_utilization=config.gpu_memory_utilization, dtype=config.dtype)

    def __init__(self, tokenizer, gpu_memory_utilization: float = 0.5, dtype: str = "auto"):
        self.vllm = import_vllm()
        self.tokenizer = tokenizer
        self.gpu_memory_utilization, self.dtype = gpu_memory_utilization, dtype
        self._engines: dict[str, object] = {}

    def _engine(self, path: str):
        if path not in self._engines:
            self._engines[path] = self.vllm.LLM(
                model=path, dtype=self.dtype, gpu_memory_utilization=self.gpu_memory_utilization
            )
        return self._engines[path]

    def generate(self, model, prompts, params: SamplingParams, *, seed=None, desc=None):
        from vllm.inputs import TokensPrompt

        stop_ids = end_token_ids(self.tokenizer, model)
        llm = self._engine(model_directory(model))
        requests = [
            self.vllm.SamplingParams(
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k if params.top_k > 0 else -1,
                stop_token_ids=stop_ids,
                skip_special_tokens=False,
                seed=None if seed is None else seed + i,
            )
            for i in range(len(prompts))
        ]
        outputs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], requests, use_tqdm=False)
        responses = []
        for out in outputs:
            completion = out.outputs[0]
            tokens = list(completion.token_ids)
            if isinstance(completion.stop_reason, int) and (not tokens or tokens[-1] != completion.stop_reason):
                tokens.append(completion.stop_reason)  # vLLM may leave a stop_token_ids hit out of token_ids
            responses.append(trim_response(tokens, set(stop_ids)))
        return responses
