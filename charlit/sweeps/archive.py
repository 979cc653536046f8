"""Keep a sweep's evidence without its weights: copy the small files its report reads into another directory.

A study that runs over several sessions or machines loses its jobs when their run dirs go (checkpoints are hundreds
of MB each). ``python report.py multirun/<date> --archive <dir>`` copies, for every job, only what
:func:`charlit.sweeps.report.write_report` and the study pooling read (``summary.json``, ``.hydra/overrides.yaml``,
``eval/eval.json``, a recipe's ``recipe.json``), keeping the paths relative to the sweep, so that
``python report.py <root of several archives>`` pools them with later sweeps into one study.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPORT_FILES = ("summary.json", "recipe.json", ".hydra/overrides.yaml", "eval/eval.json")
"""Paths, relative to a job (or recipe) dir, that the report and the study read."""


def _wanted(relative: Path) -> bool:
    return any(relative.as_posix() == name or relative.as_posix().endswith("/" + name) for name in REPORT_FILES)


def archive_sweep(sweep_dir: Path, dest: Path) -> list[Path]:
    """Copy every report file under ``sweep_dir`` to the same relative path under ``dest``; returns the copies.

    Symbolic links are neither followed nor copied (a sweep dir is treated as written by someone else), and ``dest``
    must lie outside ``sweep_dir``. Files already in ``dest`` are overwritten, so re-archiving a sweep updates it;
    a link already in ``dest`` where a copy would go (the file or a directory above it) is refused, never written
    through, so an archive cannot be made to overwrite a file outside it.
    """
    sweep_dir, dest = Path(sweep_dir), Path(dest)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a directory; pass a multirun dir (e.g. multirun/<date>).")
    root = sweep_dir.resolve()
    if dest.resolve().is_relative_to(root):
        raise ValueError(f"--archive {dest} lies inside the sweep dir {sweep_dir}; archive to a directory outside it.")
    dest_root = dest.resolve()
    copies = []
    for directory, subdirs, files in os.walk(root):  # os.walk does not descend into symlinked directories
        subdirs.sort()
        for name in sorted(files):
            path = Path(directory) / name
            relative = path.relative_to(root)
            if path.is_symlink() or not _wanted(relative):
                continue
            target = dest / relative
            if not target.parent.resolve().is_relative_to(dest_root) or target.is_symlink():
                raise ValueError(
                    f"--archive: {target} is a symbolic link or lies behind one; archive to a directory without links."
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            copies.append(target)
    if not any(p.name == "summary.json" for p in copies):
        raise ValueError(f"No finished jobs (summary.json files) under {sweep_dir}; nothing archived.")
    return copies
