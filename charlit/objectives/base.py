"""The base LightningModule every objective extends: optimiser, held-out validation, shared metrics.

A subclass declares its settings as a nested ``Config`` dataclass (see :mod:`charlit.settings`; the ``method``
config group is parsed into it), sets ``data_kind`` (what its batches hold: ``prompts``, ``conversations`` or
``pairs``; or ``data_kinds``, a tuple, when it accepts several), ``conversation_format`` for conversations
(``tokens``, ``all_turns`` or ``last_turn``, see :mod:`charlit.data.modules`) and implements
``compute_loss(batch) -> (loss, metrics, n_tokens)``. It is built as ``Objective(config, ctx)`` from its own
settings and an :class:`ObjectiveContext`, never from the whole run config, so it can be unit-tested without
Hydra. Everything else (grad norm, learning rate, tokens/s, ``val/divergence``, ``val/persona_gain``, sample
tables, the compute accounting ``compute/*`` of :mod:`charlit.compute`) is shared.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import lightning as L
import torch

from charlit.compute import ComputeMeter, MeteredSampler
from charlit.data.constitution import Constitution
from charlit.models import LoadedModel
from charlit.models.frozen import FrozenReference
from charlit.objectives.validation import HeldOutValidation, ValidationSettings, ValidationTally, looping_alarm
from charlit.sampling import Sampler, SamplingParams
from charlit.settings import setting
from charlit.teachers import Teacher

SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class OptimSettings:
    """AdamW and its learning-rate schedule (the ``optim`` block of conf/train.yaml)."""

    lr: float = setting(5.0e-4, gt=0)
    weight_decay: float = setting(0.0, ge=0)
    betas: list = setting([0.9, 0.999])
    warmup_steps: int = setting(2, ge=0)
    schedule: str = setting("constant", choices=SCHEDULES)

    def check(self, prefix: str) -> None:
        if len(self.betas) != 2 or not all(0 <= float(b) < 1 for b in self.betas):
            raise ValueError(f"{prefix}.betas={list(self.betas)} must be two numbers in [0, 1), e.g. [0.9, 0.999].")


TeacherFactory = Callable[..., Teacher]  # (policy, reference, tokenizer, constitution, weights=, ema_decay=) -> Teacher


@dataclass
class ObjectiveContext:
    """What an objective is built from besides its own settings: the model, persona and run-level services."""

    loaded: LoadedModel
    constitution: Constitution
    sampler: Sampler
    sampling: SamplingParams = field(default_factory=SamplingParams)  # on-policy sampling (the sampler group)
    teacher: TeacherFactory | None = None  # builds the ``teacher`` group's teacher (teacher-based objectives)
    data_kind: str = "prompts"  # the kind of data this run trains on
    optim: OptimSettings = field(default_factory=OptimSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    max_steps: int = 1  # for the learning-rate schedule
    seed: int = 0


class CharacterObjective(L.LightningModule):
    name: ClassVar[str] = "base"
    data_kind: ClassVar[str] = "prompts"
    data_kinds: ClassVar[tuple[str, ...]] = ()  # accepted kinds when more than one; () = (data_kind,)
    conversation_format: ClassVar[str] = "tokens"

    @dataclass
    class Config:
        """No settings; subclasses replace this with their own dataclass."""

    @classmethod
    def accepted_data_kinds(cls) -> tuple[str, ...]:
        return tuple(cls.data_kinds) or (cls.data_kind,)

    def __init__(self, config, ctx: ObjectiveContext):
        super().__init__()
        self.config = config
        self.ctx = ctx
        self.policy = ctx.loaded.model
        self.tokenizer = ctx.loaded.tokenizer
        self.constitution = ctx.constitution
        self.reference = FrozenReference(self.policy)  # a plain attribute: never saved in checkpoints
        self.compute = ComputeMeter(self.policy)  # after the reference: a full fine-tuning copy gets its own hooks
        with self.reference.model() as reference:
            self.compute.watch(reference)
        self.reported_compute = self.compute  # the latest figures summed over processes (see report_compute)
        self.sampler = MeteredSampler(ctx.sampler, self.compute)
        self.validation = HeldOutValidation(
            self.policy,
            self.reference,
            self.tokenizer,
            self.constitution,
            self.sampler,
            ctx.validation,
            seed=ctx.seed + 7919,
        )
        self.val_history: list[dict] = []  # one entry per validation run: step + aggregated metrics
        self.baselines: dict[str, float] = {}
        self.last_train_metrics: dict[str, float] = {}  # the latest value of every train/* metric
        self._val_acc: ValidationTally | None = None
        self._step_start = 0.0

    # ---- subclasses -------------------------------------------------------------------------
    def compute_loss(self, batch) -> tuple[torch.Tensor, dict[str, float], int]:
        raise NotImplementedError

    # ---- helpers ----------------------------------------------------------------------------
    def global_num_items(self, local: int) -> float:
        """Token count to divide by so DDP gradients equal one big batch (ranks average their grads)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return float(local)
        total = self.trainer.strategy.reduce(torch.tensor(float(local), device=self.device), reduce_op="sum")
        return float(total) / self.trainer.world_size

    def setup(self, stage: str) -> None:
        self.reference.to(self.device)
        teacher = getattr(self, "teacher", None)
        for network in teacher.networks() if teacher is not None else ():
            self.compute.watch(network)

    def configure_callbacks(self):
        """The compute meter's phases, unless an earlier ``trainer.validate`` on the same trainer attached them."""
        attached = self._trainer is not None and any(isinstance(c, ComputePhases) for c in self.trainer.callbacks)
        return [] if attached else [ComputePhases()]

    def report_compute(self) -> dict[str, float]:
        """The run's compute so far, summed over processes (kept for summary.json): the flat ``compute/*``."""
        meter = self.compute
        if self._trainer is not None and self.trainer.world_size > 1:

            def all_sum(values: list[float]) -> list[float]:
                tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
                return self.trainer.strategy.reduce(tensor, reduce_op="sum").tolist()

            meter = meter.reduced(all_sum, self.trainer.world_size)
        self.reported_compute = meter
        return meter.totals()

    # ---- training ---------------------------------------------------------------------------
    def on_fit_start(self):
        self.policy.train()  # validation before fit leaves submodules in eval mode

    def on_train_batch_start(self, batch, batch_idx):
        self._step_start = time.perf_counter()

    def training_step(self, batch, batch_idx):
        loss, metrics, n_tokens = self.compute_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"train/loss is {loss.item()} at step {self.global_step} (method={self.name}); stopped before the "
                f"optimizer step, and the checkpoints already written are kept. Lower optim.lr (now "
                f"{self.ctx.optim.lr}), keep trainer.gradient_clip_val on, or check the data; resume=<run dir> "
                f"continues from the last checkpoint."
            )
        elapsed = max(time.perf_counter() - self._step_start, 1e-9)
        self.compute.trained_tokens += int(n_tokens)
        logged = {
            "train/loss": loss.detach().item(),
            **{f"train/{k}": float(v) for k, v in metrics.items()},
            "train/tokens": float(n_tokens),
            "train/tokens_per_s": n_tokens / elapsed,
            "train/lr": self.optimizers().param_groups[0]["lr"],
            **self.report_compute(),
        }
        for key, value in logged.items():
            # the loss is averaged over ranks: with global-batch normalisation that is the global batch's loss
            self.log(key, value, batch_size=1, prog_bar=key == "train/loss", sync_dist=key == "train/loss")
        self.last_train_metrics.update(logged)
        return loss

    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad.detach().float().norm() for p in self.policy.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.tensor(0.0)
        self.log("train/grad_norm", norm, batch_size=1)
        self.last_train_metrics["train/grad_norm"] = float(norm)

    def configure_optimizers(self):
        optim = self.ctx.optim
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("The policy has no trainable parameters; check model.lora / model settings.")
        optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay, betas=tuple(optim.betas))
        warmup, total, schedule = optim.warmup_steps, max(self.ctx.max_steps, 1), optim.schedule

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            if schedule == "cosine":
                return 0.5 * (1 + math.cos(math.pi * progress))
            if schedule == "linear":
                return 1.0 - progress
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints ------------------------------------------------------------------------
    # A checkpoint holds what training changes: trainable weights (with LoRA, the adapter: MBs, not the
    # ~600 MB base), optimizer, validation history and baselines. Frozen weights come from the model the run
    # loads; resume=auto only resumes runs with the same config, hence the same base model.
    def on_save_checkpoint(self, checkpoint):
        frozen = {name for name, p in self.named_parameters(remove_duplicate=False) if not p.requires_grad}
        if "state_dict" in checkpoint:
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
        checkpoint["charlit"] = {
            "val_history": self.val_history,
            "baselines": self.baselines,
            "frozen_weights_omitted": len(frozen),
            "compute": self.compute.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("charlit", {})
        self.val_history = list(state.get("val_history", []))
        self.baselines = dict(state.get("baselines", {}))
        self.compute.load_state_dict(state.get("compute", {}))
        saved = checkpoint.setdefault("state_dict", {})
        # put the omitted frozen weights back; strict loading still catches any other mismatch
        for name, param in self.named_parameters(remove_duplicate=False):
            if not param.requires_grad and name not in saved:
                saved[name] = param.detach()

    # ---- validation -------------------------------------------------------------------------
    def on_validation_epoch_start(self):
        self._val_acc = ValidationTally(gate=self.validation.gate)

    def validation_step(self, batch, batch_idx):
        self._val_acc.add(self.validation.run_batch(list(batch), batch_idx, with_baselines=not self.baselines))

    def on_validation_epoch_end(self):
        tally = self._val_acc
        if self.trainer.sanity_checking or tally is None or not tally.student.gains:
            return
        fresh = {}
        if tally.baseline_scores:
            self.baselines = fresh = tally.baselines()
        metrics = {**tally.metrics(self.baselines), **fresh, **self.report_compute()}
        for key, value in metrics.items():
            self.log(key, value, batch_size=1, sync_dist=False)
        self.val_history.append({"step": int(self.global_step), **metrics})
        self.log_samples(tally.samples)
        self._check_looping(metrics)

    def _check_looping(self, metrics: dict) -> None:
        settings = self.ctx.validation
        if settings.on_looping == "off":
            return
        alarm = looping_alarm(metrics, self.baselines, settings.looping_margin)
        if alarm is None:
            return
        stop = settings.on_looping == "stop"
        if stop:  # every rank validates the same prompts, so every rank stops
            self.trainer.should_stop = True
        if self.trainer.is_global_zero:
            what = "stopping (val.on_looping=stop)" if stop else "warning"
            print(f"[charlit] {what} at step {self.global_step}: {alarm}", file=sys.stderr, flush=True)

    def log_samples(self, samples: list[dict]) -> None:
        """Hand sample generations to whichever loggers can show them (see charlit.loggers)."""
        from charlit.loggers import log_samples

        log_samples(self.trainer, samples, step=int(self.global_step))


class ComputePhases(L.Callback):
    """Opens and closes the ``train`` (a whole optimizer step) and ``validation`` phases of the objective's meter."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module.compute.enter("train")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pl_module.compute.exit()

    def on_validation_epoch_start(self, trainer, pl_module):
        pl_module.compute.enter("validation")

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.compute.exit()

    def on_train_end(self, trainer, pl_module):
        pl_module.report_compute()
