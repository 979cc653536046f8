"""Batched, KV-cached sampling with Hugging Face models: charlit's lean loop (:mod:`charlit.sampling.decode`)
on fp32 CPU and for bf16 decoding (``precision``, :mod:`charlit.sampling.precision`), through the fused Llama forward
where it applies (``fused``, :mod:`charlit.sampling.fused_llama`); Hugging Face ``generate`` elsewhere."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from charlit.models import onednn
from charlit.models.lora_merge import merged_lora
from charlit.models.modes import eval_mode
from charlit.progress import progress
from charlit.sampling import decode, fused_llama
from charlit.sampling import precision as decode_precision
from charlit.sampling.base import SAMPLERS, Sampler, SamplerSettings, SamplingParams
from charlit.sampling.lean_lora import lean_adapters
from charlit.settings import setting


def end_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end an assistant turn: the tokenizer's EOS plus the generation config's."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(int(i) for i in extra)
    return sorted(ids)


def trim_response(tokens: list[int], stop_ids: set[int]) -> list[int]:
    for i, tok in enumerate(tokens):
        if tok in stop_ids:
            return tokens[: i + 1]
    return tokens


@dataclass
class HFSamplerSettings(SamplerSettings):
    precision: str = setting(
        "auto",
        choices=decode_precision.PRECISIONS,
        help="weights an fp32 model decodes from: auto = bf16 only where timed faster on this CPU",
    )
    fused: bool = setting(True, help="decode Llama-family models on the CPU through charlit's fused forward")


@SAMPLERS.register("hf")
class HFSampler(Sampler):
    Config = HFSamplerSettings

    def __init__(self, tokenizer, batch_size: int = 16, precision: str = "fp32", fused: bool = True):
        if precision not in decode_precision.PRECISIONS:
            raise ValueError(f"sampler.precision={precision!r}; use one of {', '.join(decode_precision.PRECISIONS)}.")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.precision = precision
        self.fused = fused
        self._resolved: dict[int, str] = {}  # id(model) -> the precision auto chose for it
        self._calibrations: dict[int, dict] = {}  # id(model) -> its fused-decoding calibration record
        self._fused: fused_llama.FusedLlama | None = None  # the last fused copy, reused while it matches its model

    @classmethod
    def from_config(cls, config, tokenizer) -> HFSampler:
        return cls(tokenizer, batch_size=config.batch_size, precision=config.precision, fused=config.fused)

    def decoding_precision(self, model) -> str:
        """``bf16`` when ``model`` (fp32) decodes from bf16 copies of its linear weights, else ``fp32``; ``auto`` is
        timed once per model on this machine (cached across runs): whole decoding steps of the fused forward where
        it applies (:func:`~charlit.sampling.fused_llama.calibrate`), else the model's linear products."""
        if self.precision == "fp32" or next(model.parameters()).dtype != torch.float32:
            return "fp32"
        if self.precision == "bf16":
            return "bf16"
        if id(model) not in self._resolved:
            if self.fused_decoding(model):
                choice, _ = fused_llama.choose(self._fused_calibration(model))
            elif onednn.fp32_cpu_model(model):
                choice, record = decode_precision.calibrate(model)
                self._announce(choice, record)
            else:
                choice = "fp32"
            self._resolved[id(model)] = choice
        return self._resolved[id(model)]

    def _fused_calibration(self, model) -> dict:
        """The fused forward's timing of fp32, bf16 and their packed weights on this machine (cached across runs)."""
        if id(model) not in self._calibrations:
            choice, record = fused_llama.calibrate(model, self._fp32_linear(model))
            self._announce(choice, record)
            self._calibrations[id(model)] = record
        return self._calibrations[id(model)]

    @staticmethod
    def _announce(choice: str, record: dict) -> None:
        """One line when a calibration was measured now (not read from the cache)."""
        seconds = record.get("seconds") or {}
        if record.get("cached", True) or not seconds.get("fp32"):
            return
        speeds = ", ".join(f"{name} {seconds['fp32'] / s:.2f}x" for name, s in seconds.items() if name != "fp32")
        print(
            f"[charlit] decoding in {choice}: speed against plain fp32 on this CPU {speeds} (calibrated once, cached; "
            "sampler.precision=fp32/bf16 forces the precision)",
            flush=True,
        )

    def off_policy(self, model) -> bool:
        return self.decoding_precision(model) != "fp32"

    @contextmanager
    def decode_weights(self, model):
        """The model as decoding runs it: bf16 copies of its linear layers when :meth:`decoding_precision` says so;
        on fp32 CPU linear layers through oneDNN and LoRA as lean layers (merging would cost a weight copy per call);
        elsewhere merged LoRA weights."""
        if self.decoding_precision(model) == "bf16":
            with decode_precision.bf16_linears(model):
                yield model
        elif onednn.active(model):
            with onednn.swapped_in(model), lean_adapters(model):
                yield model
        else:
            with merged_lora(model):
                yield model

    def fused_decoding(self, model) -> bool:
        return self.fused and fused_llama.supports(model)

    @contextmanager
    def decoder(self, model):
        """What decoding runs: a :class:`~charlit.sampling.fused_llama.FusedLlama` copy of ``model`` (LoRA merged,
        products at :meth:`decoding_precision`) where it reproduces the model, else ``model`` itself inside
        :meth:`decode_weights`."""
        if not self.fused_decoding(model):
            with self.decode_weights(model):
                yield model
            return
        precision, packed = fused_llama.choose(self._fused_calibration(model), self.decoding_precision(model))
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        linear = F.linear if precision == "bf16" else self._fp32_linear(model)
        held = self._fused
        if not (
            held is not None
            and held.model() is model
            and (held.dtype, held.packed, held.plain_linear) == (dtype, packed, linear)
            and held.current()
        ):
            self._fused = None  # the old copy's memory goes before the new one is made
            self._fused = fused_llama.FusedLlama(model, dtype, linear, packed)
        else:
            held.refresh()
        yield self._fused

    @staticmethod
    def _fp32_linear(model):
        """The fp32 product decoding takes: oneDNN's where the model's calibration chose it, else torch's."""
        return onednn.linear if onednn.active(model) else F.linear

    @torch.no_grad()
    def generate(self, model, prompts, params: SamplingParams, *, seed=None, desc=None, logprobs: bool = False):
        """Responses to ``prompts``; with ``logprobs`` ``(responses, per-token log-probabilities)``, each drawn token's
        under the distribution it was drawn from (0 where greedy), aligned with its response. CPU autocast is off while
        decoding (an on-policy step samples inside ``trainer.precision=bf16-mixed``'s autocast): on the CPU the
        decoding precision is ``sampler.precision``'s alone."""
        stop_ids = end_token_ids(self.tokenizer, model)
        pad_id = self.tokenizer.pad_token_id
        device = next(model.parameters()).device
        chunks = [prompts[i : i + self.batch_size] for i in range(0, len(prompts), self.batch_size)]
        bar = progress(chunks, desc or "generate", unit="batch", leave=False, show=len(chunks) > 1)
        out: list[list[int]] = []
        out_logprobs: list[list[float]] = []
        lean = (
            self.fused_decoding(model) or onednn.active(model) or logprobs or self.decoding_precision(model) == "bf16"
        )
        with (
            eval_mode(model),
            torch.autocast("cpu", enabled=False),  # sampler.precision decides, not a bf16-mixed step's autocast
            self.decoder(model) as runner,
            torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]),
        ):
            if seed is not None:
                torch.manual_seed(seed)
            for chunk in bar:
                width = max(len(p) for p in chunk)
                input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, ids in enumerate(chunk):  # left padding: every prompt ends where generation starts
                    input_ids[row, width - len(ids) :] = torch.tensor(ids)
                    attention[row, width - len(ids) :] = 1
                input_ids, attention = input_ids.to(device), attention.to(device)
                drawn_logprobs = None
                if lean:
                    generated = decode.sample(runner, input_ids, attention, params, stop_ids, pad_id, logprobs)
                    if logprobs:
                        generated, drawn_logprobs = generated
                else:
                    sampling = params.temperature > 0
                    generated = model.generate(
                        input_ids=input_ids,
                        attention_mask=attention,
                        max_new_tokens=params.max_new_tokens,
                        do_sample=sampling,
                        temperature=params.temperature if sampling else None,
                        top_p=params.top_p if sampling else None,
                        top_k=params.top_k if sampling else None,
                        eos_token_id=stop_ids,
                        pad_token_id=pad_id,
                        use_cache=True,
                    )[:, width:]
                for i, row in enumerate(generated.tolist()):
                    out.append(trim_response(row, set(stop_ids)))
                    if drawn_logprobs is not None:
                        out_logprobs.append(drawn_logprobs[i, : len(out[-1])].tolist())
        return (out, out_logprobs) if logprobs else out
