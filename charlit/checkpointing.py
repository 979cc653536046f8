"""Crash-safe checkpoints and automatic resume.

Checkpoints are written to a temporary file, flushed to disk and renamed over the previous one, so a run
killed (or a disk filling up) while saving leaves the last good checkpoint intact. They are read back with
``torch.load(weights_only=True)``.

``resume=auto`` (the default) makes rerunning a command continue an interrupted run: each run dir records a
fingerprint of its resolved config; a new run with the same fingerprint looks among its sibling run dirs
(``outputs/<method>/*``) and the same job of earlier sweeps (``multirun/*/<job>``) for the newest one that has
a checkpoint but no ``summary.json`` (it never finished), and continues there.
A job of a sweep or a recipe stage whose counterpart in an earlier sweep or recipe run (same job dir name,
same fingerprint) *finished* is reused
instead of retrained, so rerunning a sweep or a two-stage recipe after a crash redoes only the unfinished
jobs. ``resume=never`` always starts fresh; ``resume=<run dir or .ckpt>`` resumes that one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

RUN_FILE = "run.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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


def config_fingerprint(config: dict) -> str:
    """A hash of everything that defines a run (the ``resume`` setting itself excluded)."""
    relevant = {k: v for k, v in config.items() if k != "resume"}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Resume:
    run_dir: Path
    checkpoint: Path | None  # None: the run finished; reuse its summary.json instead of training


def _same_config(run_dir: Path, fingerprint: str) -> bool:
    try:
        return json.loads((run_dir / RUN_FILE).read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def _unfinished(run_dir: Path, fingerprint: str) -> bool:
    return (
        _same_config(run_dir, fingerprint)
        and (run_dir / LAST_CHECKPOINT).is_file()
        and not (run_dir / "summary.json").exists()
    )


def _finished(run_dir: Path, fingerprint: str) -> bool:
    return _same_config(run_dir, fingerprint) and (run_dir / "summary.json").is_file()


def find_resume(setting: str, run_dir: Path, fingerprint: str, reuse_finished: bool = False) -> Resume | None:
    """What ``resume=<setting>`` resumes for a run about to start in ``run_dir``, or None to start fresh.

    ``reuse_finished`` (sweep jobs and recipe stages, whose dir names are stable) also looks at the same job of
    earlier sweeps / recipe runs and reuses it when it finished; single runs only continue unfinished siblings."""
    setting = str(setting)
    if setting == "never":
        return None
    if setting == "auto":
        # the same job of earlier sweeps / recipe runs (multirun/<time>/<job>/, outputs/<m>/<time>/<i>_<stage>/)
        same_job = [d for d in run_dir.parent.parent.glob(f"*/{run_dir.name}") if d.is_dir()] if reuse_finished else []
        finished = [d for d in same_job if _finished(d, fingerprint)]
        if finished:
            return Resume(max(finished, key=lambda d: (d / "summary.json").stat().st_mtime), None)
        # ... and siblings (outputs/<method>/<time>/)
        candidates = [d for d in {*run_dir.parent.glob("*"), *same_job} if d.is_dir() and _unfinished(d, fingerprint)]
        if not candidates:
            return None
        newest = max(candidates, key=lambda d: (d / LAST_CHECKPOINT).stat().st_mtime)
        return Resume(newest, newest / LAST_CHECKPOINT)
    target = Path(setting)
    checkpoint = target if target.suffix == ".ckpt" else target / LAST_CHECKPOINT
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"resume={setting}: no checkpoint at {checkpoint}; pass a run dir holding "
            f"{LAST_CHECKPOINT}, a .ckpt file, 'auto' or 'never'."
        )
    owner = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else run_dir
    return Resume(owner, checkpoint)


def mark_run(run_dir: Path, fingerprint: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_FILE).write_text(json.dumps({"fingerprint": fingerprint}))
