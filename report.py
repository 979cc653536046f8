"""Aggregate a sweep: ``python report.py multirun/<date>`` writes report.csv, report.md and plots (see README)."""

import argparse
import sys
from pathlib import Path

from charlit.sweeps.archive import archive_sweep
from charlit.sweeps.publish import log_report_to_wandb
from charlit.sweeps.report import write_report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun dir (holds one sub-dir per job)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the sweep dir)")
    parser.add_argument("--wandb", action="store_true", help="also log the report to W&B (offline without an API key)")
    parser.add_argument(
        "--archive",
        type=Path,
        default=None,
        help="also copy the files the report reads (no weights) to this dir, to commit or pool with later sweeps",
    )
    args = parser.parse_args(argv)
    try:
        copies = archive_sweep(args.sweep_dir, args.archive) if args.archive else []  # a bad --archive writes nothing
        result = write_report(args.sweep_dir, args.out)
    except (ValueError, FileNotFoundError) as err:
        print(f"charlit: error: {err}", file=sys.stderr)
        return 2
    print(f"{len(result['rows'])} jobs\ntable: {result['csv']}\nmarkdown: {result['markdown']}")
    for plot in result["plots"]:
        print(f"plot: {plot}")
    if copies:
        print(f"archive: {len(copies)} files in {args.archive}")
    if args.wandb:
        log_report_to_wandb(result, args.sweep_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
