"""What a charlit run shows while it works: one progress bar per long phase, or a plain line now and then.

Every long phase (generating a dataset, a sampler call of several batches, the training steps) reports through
:class:`Progress`:

* on a terminal (stderr is a TTY, where the bar is drawn) a tqdm bar;
* otherwise (a log file, a pipe, a batch scheduler) one ``[charlit] <phase>: n/total ...`` line on stdout every
  ``$CHARLIT_PROGRESS_EVERY`` seconds (default 30; 0 = none) and a closing line for a phase that printed one, so
  logs get progress without carriage-return garbage and short phases print nothing.

A phase started while another one is running (a sampler call inside dataset generation or inside a training
step) shows nothing: one bar per long phase.  Training suspends its bar while validation runs, so the
validation sampler's bars show.

:func:`setup` quiets the libraries' console output that is not the user's business (see there), and
:func:`trainer_callbacks` gives the Lightning callbacks charlit trains with: the training bar above and one
``[charlit] training: ...`` line (trainable parameters, device, steps) in place of Lightning's model summary.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_open = 0  # phases running in this process; one opened inside another shows nothing


def every_s() -> float:
    """Seconds between two plain progress lines (``$CHARLIT_PROGRESS_EVERY``, default 30; 0 = none)."""
    try:
        return max(float(os.environ.get("CHARLIT_PROGRESS_EVERY", 30)), 0.0)
    except ValueError:
        return 30.0


def interactive() -> bool:
    """Whether progress is drawn as a bar: stderr (tqdm's stream) is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _plural(unit: str, n: int) -> str:
    return unit if n == 1 else unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


class Progress:
    """One phase's progress: ``update(n)``, ``update_to(n)``, ``set_postfix_str(text)``, ``close()`` (or ``with``)."""

    def __init__(
        self, total: int | None, desc: str, unit: str = "it", initial: int = 0, leave: bool = True, show: bool = True
    ):
        global _open
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.shown = show and _open == 0
        _open += 1
        self._closed = False
        self._postfix = ""
        self._start = self._last = time.monotonic()
        self._initial = initial
        self._lines = 0
        self._bar = None
        if self.shown and interactive():
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix_str(self, text: str) -> None:
        self._postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def update(self, n: int = 1) -> None:
        self.update_to(self.n + n)

    def update_to(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n - self.n)
        self.n = n
        if (
            self.shown
            and self._bar is None
            and every_s() > 0
            and time.monotonic() - self._last >= every_s()
            and not (self.total and n >= self.total)
        ):  # the closing line reports the end
            self._line()

    def _line(self, final: bool = False) -> None:
        now = time.monotonic()
        self._last = now
        elapsed = now - self._start
        text = f"[charlit] {self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} {_plural(self.unit, self.total)} ({100 * self.n / self.total:.0f}%)"
        else:
            text += f" {_plural(self.unit, self.n)}"
        text += f", {_duration(elapsed)}"
        done = self.n - self._initial
        if final:
            text += " (done)" if not self.total or self.n >= self.total else " (stopped)"
        elif self.total and done > 0:
            text += f", ~{_duration(elapsed / done * (self.total - self.n))} left"
        if self._postfix:
            text += f", {self._postfix}"
        print(text, flush=True)
        self._lines += 1

    def close(self) -> None:
        global _open
        if self._closed:
            return
        self._closed = True
        _open -= 1
        if self._bar is not None:
            self._bar.close()
        elif self._lines:  # a phase long enough to have printed a line says when it ends
            self._line(final=True)

    def suspend(self) -> _Suspended:
        """A block during which this phase does not count as running (its bar stays, inner phases show)."""
        return _Suspended()


class _Suspended:
    def __enter__(self):
        global _open
        _open -= 1

    def __exit__(self, *exc):
        global _open
        _open += 1


def progress(
    items: Iterable[T], desc: str, unit: str = "it", total: int | None = None, leave: bool = True, show: bool = True
) -> Iterator[T]:
    """Iterate ``items`` as one phase (``total`` defaults to ``len(items)``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(total, desc, unit=unit, leave=leave, show=show) as bar:
        for item in items:
            yield item
            bar.update()


# ---- libraries' console output ---------------------------------------------------------------------------------


@functools.cache
def setup() -> None:
    """Keep the console for charlit's own lines (idempotent; call it once a process knows it trains).

    * Lightning's info lines ("GPU available", "TPU available", a litlogger advertisement, "`Trainer.fit`
      stopped") leave the console and stay in the run dir's ``train.log`` (Hydra's file handler); its warnings
      and errors still print. charlit prints the device and steps in its own ``[charlit] training:`` line.
    * One deprecation warning raised *inside* a library, where nothing on charlit's side calls the deprecated
      API, is ignored by exact message and the module it is attributed to: Lightning 2.6 builds torch's
      deprecated ``LeafSpec`` in ``lightning.pytorch.utilities._pytree`` whenever it wraps a data loader (the same
      warning from any other module, charlit's included, still shows).
    * Off a terminal, transformers' own tqdm bars (loading and writing weights) are turned off: in a log they
      are carriage-return noise, and charlit reports its phases itself.
    """
    for handler in logging.getLogger("lightning").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    if not interactive():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def describe_training(trainer, module) -> str:
    """``[charlit] training: ...``: what is trained, where, for how long (in place of Lightning's summary)."""
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    policy = getattr(module, "policy", module)
    steps = (
        f"{trainer.max_steps} {_plural('step', trainer.max_steps)}"
        if trainer.max_steps and trainer.max_steps > 0
        else f"{trainer.max_epochs} {_plural('epoch', trainer.max_epochs)}"
    )
    devices = f"{trainer.num_devices} {trainer.strategy.root_device.type} {_plural('device', trainer.num_devices)}"
    if trainer.world_size > 1:
        devices += f" x {trainer.num_nodes} {_plural('node', trainer.num_nodes)}"
    return (
        f"[charlit] training: {_count(trainable)} of {_count(total)} parameters trainable "
        f"({type(policy).__name__}), {steps} on {devices}, precision {trainer.precision}"
    )


VALIDATION_HEADLINES = ("val/divergence", "val/persona_progress", "val/persona_progress_gated", "val/looping_frac")


def validation_line(metrics: dict) -> str:
    """``[charlit] validation at step N: ...`` with the headline ``val/*`` numbers."""
    shown = [f"{k.split('/', 1)[1]}={metrics[k]:.3g}" for k in VALIDATION_HEADLINES if k in metrics]
    return f"[charlit] validation at step {metrics['step']}: " + ", ".join(shown)


@functools.cache
def _callback_classes():
    from lightning.pytorch.callbacks import Callback, ProgressBar

    class TrainingLine(Callback):
        """Prints :func:`describe_training` once when fitting starts (rank zero)."""

        def on_fit_start(self, trainer, pl_module):
            if trainer.is_global_zero:
                print(describe_training(trainer, pl_module), flush=True)

    class TrainProgress(ProgressBar):
        """The training steps as one :class:`Progress` phase; validation runs with it suspended."""

        def __init__(self):
            super().__init__()
            self._enabled = True
            self._bar: Progress | None = None
            self._val: Progress | None = None
            self._suspended = None

        def disable(self) -> None:
            self._enabled = False

        def enable(self) -> None:
            self._enabled = True

        @property
        def is_enabled(self) -> bool:
            return self._enabled

        def _total(self, trainer) -> int | None:
            if trainer.max_steps and trainer.max_steps > 0:
                return int(trainer.max_steps)
            batches = self.total_train_batches
            if trainer.max_epochs and trainer.max_epochs > 0 and batches != float("inf"):
                return int(batches * trainer.max_epochs / max(trainer.accumulate_grad_batches, 1))
            return None

        def on_train_start(self, trainer, pl_module):
            self._bar = Progress(
                self._total(trainer),
                "train",
                unit="step",
                initial=int(trainer.global_step),
                show=self._enabled and trainer.is_global_zero,
            )

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self._bar is None:
                return
            metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
            self._bar.set_postfix_str(
                ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
            )
            self._bar.update_to(int(trainer.global_step))

        def on_validation_start(self, trainer, pl_module):
            if self._bar is not None and self._suspended is None:
                self._suspended = self._bar.suspend()
                self._suspended.__enter__()
            if trainer.sanity_checking:
                return
            counts = trainer.num_val_batches if isinstance(trainer.num_val_batches, list) else [trainer.num_val_batches]
            batches = int(sum(counts)) if all(c != float("inf") for c in counts) else 0
            show = self._enabled and trainer.is_global_zero
            self._val = Progress(batches or None, f"validation at step {trainer.global_step}", unit="batch", show=show)
            if self._val.shown and not interactive():  # each batch samples three systems: say it started
                print(f"[charlit] validation at step {trainer.global_step}: {batches} held-out batches", flush=True)

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if self._val is not None:
                self._val.update()

        def on_validation_end(self, trainer, pl_module):
            if self._val is not None:
                shown = self._val.shown
                self._val.close()
                self._val = None
                history = getattr(pl_module, "val_history", None)
                if shown and history and history[-1]["step"] == trainer.global_step:
                    print(validation_line(history[-1]), flush=True)
            if self._suspended is not None:
                self._suspended.__exit__(None, None, None)
                self._suspended = None

        def on_train_end(self, trainer, pl_module):
            self.teardown(trainer, pl_module, "fit")

        def on_exception(self, trainer, pl_module, exception):
            self.teardown(trainer, pl_module, "fit")

        def teardown(self, trainer, pl_module, stage):
            self.on_validation_end(trainer, pl_module)
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    return TrainingLine, TrainProgress


def trainer_callbacks(progress_bar: bool = True) -> list:
    """The Lightning callbacks for charlit's console output: the ``[charlit] training:`` line and, unless
    ``progress_bar`` is False, the training progress (a bar on a terminal, plain lines otherwise)."""
    training_line, train_progress = _callback_classes()
    return [training_line(), *([train_progress()] if progress_bar else [])]
