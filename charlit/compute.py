"""Compute accounting: tokens, FLOPs and wall time by phase, for ``summary.json``, the loggers and sweep reports.

The FLOP rule, in one place (docs/training.md#compute-accounting):

* a forward costs ``2·N`` FLOPs per token, ``N`` the parameters it runs: every parameter once (a tied
  embedding/lm_head once), LoRA adapters only while enabled and not merged;
* a trained forward (gradients on, trainable parameters) adds its backward: ``2·N`` for the activation gradients
  through every weight, frozen ones included, and ``2·N_trainable`` for the weight gradients, so ``6N`` per token
  for full fine-tuning and ``4N + 2·N_lora`` with LoRA (``2·N`` more when gradient checkpointing recomputes the
  forward);
* tokens are the positions a forward runs, padding excluded; sampling counts the prompt and every generated token
  once (KV-cached decoding). Attention's context-length term is left out, and the lm_head counts at every position.

Phases: ``data_generation`` (the dataset's generation cost, read from its card, also when the run reuses it from
the cache), ``sampling`` (on-policy samples), ``scoring`` (no-grad forwards inside a training step: teacher and
reference), ``train`` (the rest of a step: the student's forward, backward and update) and ``validation``.
``compute/flops`` sums the first four. Forwards are counted by hooks on each watched network's decoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial

import torch

from charlit.models.heads import _unwrap, checkpointing_on
from charlit.sampling.base import Sampler

PHASES = ("data_generation", "sampling", "scoring", "train", "validation")
TRAINING_PHASES = PHASES[:4]
LIVE_PHASES = PHASES[1:]  # counted by this process (the dataset's cost comes from its card)
SUMMED = ("flops", "generated_tokens", "sampled_tokens", "scored_tokens", "trained_tokens")


def flops_per_token(n_params: int, n_trainable: int = 0, *, trained: bool = False, recompute: bool = False) -> float:
    """FLOPs one token costs in a forward over ``n_params`` parameters; ``trained``: with its backward."""
    if not trained:
        return 2.0 * n_params
    return 4.0 * n_params + 2.0 * n_trainable + (2.0 * n_params if recompute else 0.0)


def param_counts(model: torch.nn.Module) -> tuple[int, int, int]:
    """``(N, N_trainable, N_adapter)``: unique parameters, those with gradients, and LoRA adapter weights."""
    total = trainable = adapter = 0
    for name, param in model.named_parameters():
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
        adapter += param.numel() if "lora_" in name else 0
    return total, trainable, adapter


def forward_tokens(args: tuple, kwargs: dict) -> int:
    """The positions one decoder call runs, padding excluded: its attention mask's ones over the new positions."""
    ids = kwargs.get("input_ids")
    if ids is None:
        ids = args[0] if args else kwargs["inputs_embeds"][..., 0]
    mask, width = kwargs.get("attention_mask"), ids.shape[-1]
    if torch.is_tensor(mask) and mask.dim() == 2 and mask.shape[-1] >= width:
        return int(mask[:, -width:].sum())
    return ids.numel()


class Network:
    """A model's parameter counts, and whether its LoRA adapters run in the current forward."""

    def __init__(self, model: torch.nn.Module):
        self.n_params, self.n_trainable, self.n_adapter = param_counts(model)
        base = _unwrap(model)
        self.probe = next((m for m in base.modules() if hasattr(m, "lora_A")), None)
        self.recompute = checkpointing_on(base)

    def flops(self, tokens: int, trained: bool) -> float:
        off = self.probe is not None and (self.probe.disable_adapters or self.probe.merged)
        n_params = self.n_params - (self.n_adapter if off else 0)
        trained = trained and self.n_trainable > 0 and not off
        return tokens * flops_per_token(n_params, self.n_trainable, trained=trained, recompute=self.recompute)


@dataclass
class PhaseTally:
    seconds: float = 0.0
    tokens: int = 0  # forward tokens (data generation: generated tokens)
    flops: float = 0.0


def _sync() -> None:
    """Wait for queued GPU work, so that a phase's wall time is its own."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


class ComputeMeter:
    """Counters and phase timers of one run. ``watch(model)`` counts every forward of ``model`` into the phase open
    at the time (none open: not counted); a no-grad forward inside ``train`` counts as ``scoring``."""

    def __init__(self, policy: torch.nn.Module | None = None, clock: Callable[[], float] = time.perf_counter):
        self.phases = {name: PhaseTally() for name in PHASES}
        self.sampled_tokens = 0  # the student's samples in training steps
        self.trained_tokens = 0  # tokens the training loss covers
        self.data: dict[str, dict] = {}  # data stage -> generated_tokens, flops, seconds
        self.n_params = self.n_trainable = 0
        self._clock, self._stack, self._since = clock, [], 0.0
        self._networks: dict[int, Network] = {}
        self._entered: list[bool] = []
        self._paused = 0
        if policy is not None:
            network = self.watch(policy)
            self.n_params, self.n_trainable = network.n_params, network.n_trainable

    # ---- phases ------------------------------------------------------------------------------
    def _charge(self) -> None:
        now = self._clock()
        if self._stack:
            self.phases[self._stack[-1]].seconds += now - self._since
        self._since = now

    def enter(self, phase: str) -> None:
        _sync()
        self._charge()
        self._stack.append(phase)

    def exit(self) -> None:
        _sync()
        self._charge()
        self._stack.pop()

    @contextmanager
    def phase(self, name: str):
        self.enter(name)
        try:
            yield
        finally:
            self.exit()

    # ---- counting ----------------------------------------------------------------------------
    def watch(self, model: torch.nn.Module) -> Network:
        decoder = _unwrap(model).get_decoder()
        if id(decoder) not in self._networks:
            network = self._networks[id(decoder)] = Network(model)
            decoder.register_forward_pre_hook(partial(self._before, network), with_kwargs=True)
            decoder.register_forward_hook(self._after)
        return self._networks[id(decoder)]

    def _add(self, network: Network, tokens: int, trained: bool) -> None:
        tally = self.phases[self._stack[-1]]
        tally.tokens += tokens
        tally.flops += network.flops(tokens, trained)

    def _before(self, network: Network, module, args, kwargs) -> None:
        counting = bool(self._stack) and not self._paused
        scoring = counting and self._stack[-1] == "train" and not torch.is_grad_enabled()
        if scoring:
            self.enter("scoring")
        self._entered.append(scoring)
        if counting:
            self._add(network, forward_tokens(args, kwargs), trained=torch.is_grad_enabled())

    def _after(self, module, args, output) -> None:
        if self._entered.pop():
            self.exit()

    @contextmanager
    def sampling(self):
        """Around one sampler call: inside a training step it is the ``sampling`` phase. Hooks pause (a decoding
        loop's masks span unwritten cache slots); :meth:`sampled` counts the call instead."""
        nested = self._stack[-1:] == ["train"]
        if nested:
            self.enter("sampling")
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            if nested:
                self.exit()

    def sampled(self, model, prompts: list[list[int]], responses: list[list[int]]) -> None:
        if not self._stack:
            return
        generated = sum(len(r) for r in responses)
        if self._stack[-1] == "sampling":
            self.sampled_tokens += generated
        network = self._networks.get(id(_unwrap(model).get_decoder())) or Network(model)
        self._add(network, sum(len(p) for p in prompts) + generated, trained=False)

    def add_data(self, stages: dict[str, dict]) -> None:
        """The generation cost of the run's dataset: ``{stage: the generation block of its card}``."""
        for name, generation in stages.items():
            self.data[name] = {
                "generated_tokens": int(generation.get("new_tokens", 0)),
                "flops": generation.get("flops"),  # None: a card written before charlit counted FLOPs
                "seconds": float(generation.get("seconds", 0.0)),
            }
        self.phases["data_generation"] = PhaseTally(
            seconds=sum(d["seconds"] for d in self.data.values()),
            tokens=sum(d["generated_tokens"] for d in self.data.values()),
            flops=sum(d["flops"] or 0.0 for d in self.data.values()),
        )

    # ---- reporting ---------------------------------------------------------------------------
    def totals(self) -> dict[str, float]:
        """The flat ``compute/*`` figures the loggers and the validation history record."""
        self._charge()
        phases = self.phases
        return {
            "compute/flops": sum(phases[p].flops for p in TRAINING_PHASES),
            "compute/validation_flops": phases["validation"].flops,
            "compute/generated_tokens": self.sampled_tokens + phases["data_generation"].tokens,
            "compute/scored_tokens": phases["scoring"].tokens,
            "compute/trained_tokens": self.trained_tokens,
            **{f"compute/seconds_{p}": phases[p].seconds for p in PHASES},
        }

    def summary(self) -> dict:
        """The ``compute`` block of summary.json."""
        totals = self.totals()
        return {
            "n_params": self.n_params,
            "n_trainable": self.n_trainable,
            "flops": totals["compute/flops"],
            "generated_tokens": totals["compute/generated_tokens"],
            "sampled_tokens": self.sampled_tokens,
            "scored_tokens": totals["compute/scored_tokens"],
            "trained_tokens": self.trained_tokens,
            "phases": {p: asdict(t) for p, t in self.phases.items()},
            "data_stages": dict(self.data),
        }

    def state_dict(self) -> dict:
        self._charge()
        return {
            "phases": {p: asdict(t) for p, t in self.phases.items()},
            "sampled_tokens": self.sampled_tokens,
            "trained_tokens": self.trained_tokens,
            "data": dict(self.data),
        }

    def load_state_dict(self, state: dict) -> None:
        self.phases.update({p: PhaseTally(**t) for p, t in state.get("phases", {}).items()})
        self.sampled_tokens = int(state.get("sampled_tokens", self.sampled_tokens))
        self.trained_tokens = int(state.get("trained_tokens", self.trained_tokens))
        self.data = dict(state.get("data", self.data))

    def reduced(self, all_sum: Callable[[list[float]], list[float]], world_size: int) -> ComputeMeter:
        """A copy with every process's live counters summed by ``all_sum`` (wall times: their mean); the dataset's
        cost, the same on every process, is counted once."""
        self._charge()
        values = [float(v) for p in LIVE_PHASES for v in asdict(self.phases[p]).values()]
        summed = all_sum([*values, self.sampled_tokens, self.trained_tokens])
        copy = ComputeMeter(clock=self._clock)
        copy.n_params, copy.n_trainable, copy.data = self.n_params, self.n_trainable, dict(self.data)
        copy.phases["data_generation"] = self.phases["data_generation"]
        for i, phase in enumerate(LIVE_PHASES):
            seconds, tokens, flops = summed[3 * i : 3 * i + 3]
            copy.phases[phase] = PhaseTally(seconds / world_size, round(tokens), flops)
        copy.sampled_tokens, copy.trained_tokens = round(summed[-2]), round(summed[-1])
        return copy


def sum_compute(blocks: dict[str, dict]) -> dict:
    """``{run name: its compute block}`` added up (a multi-stage recipe's stages); data stages are named
    ``<run>/<data stage>``."""
    total: dict = {key: 0 for key in SUMMED}
    total["phases"] = {p: asdict(PhaseTally()) for p in PHASES}
    total["data_stages"] = {}
    for run, block in blocks.items():
        for key in SUMMED:
            total[key] += block.get(key, 0)
        for phase, tally in block.get("phases", {}).items():
            for key, value in tally.items():
                total["phases"][phase][key] += value
        total["data_stages"].update({f"{run}/{name}": d for name, d in block.get("data_stages", {}).items()})
    return total


class MeteredSampler(Sampler):
    """A sampler whose calls a :class:`ComputeMeter` counts."""

    def __init__(self, inner: Sampler, meter: ComputeMeter):
        self.inner, self.meter = inner, meter

    def off_policy(self, model) -> bool:
        return self.inner.off_policy(model)

    def generate(self, model, prompts, params, *, seed=None, desc=None, logprobs: bool = False):
        with self.meter.sampling():
            extra = {"logprobs": True} if logprobs else {}  # samplers that never go off-policy need not take it
            out = self.inner.generate(model, prompts, params, seed=seed, desc=desc, **extra)
            self.meter.sampled(model, prompts, out[0] if logprobs else out)
        return out
