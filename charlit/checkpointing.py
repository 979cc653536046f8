"""Crash-safe checkpoints and automatic resume.

Checkpoints are written to a temporary file, flushed to disk and renamed over the previous one, so a run
killed (or a disk filling up) while saving leaves the last good checkpoint intact. They are read back with
``torch.load(weights_only=True)``. ``summary.json`` and ``run.json`` are written the same way; a summary that
does not parse counts as missing (the run did not finish).

``resume=auto`` (the default) makes rerunning a command continue an interrupted run: each run dir records a
fingerprint of its resolved config (secrets hashed, never stored); a new run with the same fingerprint looks
among its sibling run dirs (``outputs/<method>/*``) and the same job of earlier sweeps (``multirun/*/<job>``)
for the newest one that has a checkpoint but no ``summary.json`` (it never finished), and continues there.
A process training in a run dir holds an exclusive lock on its ``.lock`` file (released by the kernel when the
process dies, ``kill -9`` included), so a dir still in use is never resumed by a second process, and two runs
never share a dir.
A job of a sweep or a recipe stage whose counterpart in an earlier sweep or recipe run (same job dir name,
same fingerprint) *finished* is reused
instead of retrained, so rerunning a sweep or a two-stage recipe after a crash redoes only the unfinished
jobs. ``resume=never`` always starts fresh; ``resume=<run dir or .ckpt>`` resumes that one.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from charlit.loggers import is_secret_key
from charlit.paths import try_lock

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
VAL_HISTORY_FILE = "val_history.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
CSV_METRICS = Path("csv") / "metrics.csv"


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_path(path)
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            if err.errno == errno.ENOSPC:
                previous = (
                    f"the previous checkpoint {path} is intact" if path.exists() else "no earlier checkpoint exists"
                )
                raise OSError(
                    errno.ENOSPC,
                    f"No space left on the device while writing checkpoint {path}; {previous}. "
                    f"Free disk space (or point the run dir elsewhere) and rerun the same command "
                    f"to resume.",
                ) from err
            raise

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def write_json(path: Path, data) -> None:
    """Write ``data`` as JSON atomically: a kill mid-write leaves the previous file (or none), never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    with open(tmp, "w") as fh:
        fh.write(json.dumps(data, indent=2, default=str))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_summary(run_dir: Path) -> dict | None:
    """The run's ``summary.json``, or None when it is missing or does not parse (the run did not finish)."""
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _hash_secrets(value):
    """``value`` (a plain config) with the values of secret keys replaced by their sha256."""
    if isinstance(value, dict):
        return {
            k: hashlib.sha256(str(v).encode()).hexdigest() if is_secret_key(k) else _hash_secrets(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_hash_secrets(v) for v in value]
    return value


def run_fingerprint(cfg: DictConfig) -> str:
    """A hash of everything that defines a run: the whole resolved config (nothing redacted, secrets hashed),
    the ``resume`` setting itself excluded."""
    config = OmegaConf.to_container(cfg, resolve=True)
    relevant = _hash_secrets({k: v for k, v in config.items() if k != "resume"})
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunLock:
    """An exclusive ``flock`` on ``<run dir>/.lock``, held while this process trains in the dir; the kernel drops
    it when the process ends, however it ends. Only global rank 0 locks: the other ranks of a multi-GPU run start
    after it and train in the same dir."""

    def __init__(self, run_dir: Path, fd: int | None = None):
        self.run_dir, self._fd = run_dir, fd

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock | None:
        """The lock, or None when another process holds it; the holder removes the temporary files a killed
        earlier holder left half-written."""
        if rank_zero_only.rank != 0:
            return cls(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = try_lock(run_dir / LOCK_FILE)
        if fd is None:
            return None
        for orphan in [*run_dir.glob(".*.tmp-*"), *(run_dir / "checkpoints").glob(".*.tmp-*")]:
            orphan.unlink(missing_ok=True)
        return cls(run_dir, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def claim(run_dir: Path) -> RunLock:
    """The lock of a fresh run's own dir; a dir another process trains in is refused, never shared."""
    lock = RunLock.acquire(run_dir)
    if lock is None:
        raise ValueError(
            f"The run dir {run_dir} is in use by another charlit process (it holds {run_dir / LOCK_FILE}): two "
            f"runs started at the same moment or were given the same hydra.run.dir. Rerun with another "
            f"hydra.run.dir (or none: each run gets its own)."
        )
    return lock


@dataclass
class Resume:
    run_dir: Path
    checkpoint: Path | None  # None: the run finished; reuse its summary.json instead of training
    lock: RunLock | None = None  # held while resuming (None for a finished run)


def _same_config(run_dir: Path, fingerprint: str) -> bool:
    try:
        return json.loads((run_dir / RUN_FILE).read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError, AttributeError):
        return False


def _unfinished(run_dir: Path, fingerprint: str) -> bool:
    return _same_config(run_dir, fingerprint) and (run_dir / LAST_CHECKPOINT).is_file() and not read_summary(run_dir)


def _finished(run_dir: Path, fingerprint: str) -> bool:
    return _same_config(run_dir, fingerprint) and read_summary(run_dir) is not None


def _resume_free(candidates: list[Path], run_dir: Path) -> Resume | None:
    """The newest candidate no other process is training in, locked; busy ones are skipped, saying so."""
    for candidate in sorted(candidates, key=lambda d: (d / LAST_CHECKPOINT).stat().st_mtime, reverse=True):
        lock = RunLock.acquire(candidate)
        if lock is not None:
            return Resume(candidate, candidate / LAST_CHECKPOINT, lock)
        print(
            f"[charlit] not resuming {candidate}: another process is training in it (it holds its {LOCK_FILE}); "
            f"this run continues another unfinished dir or starts fresh in {run_dir}",
            flush=True,
        )
    return None


def find_resume(setting: str, run_dir: Path, fingerprint: str, reuse_finished: bool = False) -> Resume | None:
    """What ``resume=<setting>`` resumes for a run about to start in ``run_dir``, or None to start fresh.

    ``reuse_finished`` (sweep jobs and recipe stages, whose dir names are stable) also looks at the same job of
    earlier sweeps / recipe runs and reuses it when it finished; single runs only continue unfinished siblings.
    A run dir is resumed with its lock held (see :class:`RunLock`)."""
    setting = str(setting)
    if setting == "never":
        return None
    if setting == "auto":
        # the same job of earlier sweeps / recipe runs (multirun/<time>/<job>/, outputs/<m>/<time>/<i>_<stage>/)
        same_job = [d for d in run_dir.parent.parent.glob(f"*/{run_dir.name}") if d.is_dir()] if reuse_finished else []
        finished = [d for d in same_job if _finished(d, fingerprint)]
        if finished:
            return Resume(max(finished, key=lambda d: (d / SUMMARY_FILE).stat().st_mtime), None)
        # ... and siblings (outputs/<method>/<time>/)
        candidates = [d for d in {*run_dir.parent.glob("*"), *same_job} if d.is_dir() and _unfinished(d, fingerprint)]
        return _resume_free(candidates, run_dir)
    target = Path(setting)
    checkpoint = target if target.suffix == ".ckpt" else target / LAST_CHECKPOINT
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"resume={setting}: no checkpoint at {checkpoint}; pass a run dir holding "
            f"{LAST_CHECKPOINT}, a .ckpt file, 'auto' or 'never'."
        )
    owner = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else run_dir
    lock = RunLock.acquire(owner)
    if lock is None:
        raise ValueError(
            f"resume={setting}: another process is training in {owner} (it holds {owner / LOCK_FILE}); wait for it "
            f"to end or stop it, or start fresh with resume=never."
        )
    return Resume(owner, checkpoint, lock)


def mark_run(run_dir: Path, fingerprint: str) -> None:
    write_json(run_dir / RUN_FILE, {"fingerprint": fingerprint})


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint was saved at (memory-mapped: no weights are read)."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def logged_rows(run_dir: Path, before_step: int) -> list[dict]:
    """The rows of the run's ``csv/metrics.csv`` logged before optimizer step ``before_step`` (a resumed run logs
    the later ones again); a row cut short by a kill is dropped."""
    try:
        with open(run_dir / CSV_METRICS, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return []
    complete = [r for r in rows if None not in r.values() and None not in r and r.get("step", "").isdigit()]
    return [r for r in complete if int(r["step"]) < before_step]


def log_rows_again(logger, rows: list[dict]) -> None:
    """Put ``rows`` back at the top of a fresh ``CSVLogger``'s metrics file (Lightning deletes the old file)."""
    if not rows or type(logger).__name__ != "CSVLogger":
        return
    logger.experiment.metrics[:0] = [{k: v for k, v in r.items() if v != ""} for r in rows]
    logger.save()


class ValHistoryFile(L.Callback):
    """Keeps ``<run dir>/val_history.json`` equal to the objective's validation history.

    A checkpoint is saved before the validation of the same step runs, so after a kill the checkpoint lacks that
    validation; a resumed run (``resumed_step``) takes back the rows up to its checkpoint's step from this file."""

    def __init__(self, run_dir: Path, resumed_step: int | None = None):
        self.path, self.resumed_step = run_dir / VAL_HISTORY_FILE, resumed_step

    def on_train_start(self, trainer, pl_module):
        if self.resumed_step is None:
            return
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            saved = []
        have = {row["step"] for row in pl_module.val_history}
        missing = [r for r in saved if isinstance(r, dict) and r.get("step", -1) <= self.resumed_step]
        missing = [r for r in missing if r["step"] not in have]
        pl_module.val_history = sorted([*pl_module.val_history, *missing], key=lambda r: r["step"])
        self._write(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._write(trainer, pl_module)

    def _write(self, trainer, pl_module):
        if trainer.is_global_zero:
            write_json(self.path, pl_module.val_history)
