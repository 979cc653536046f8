"""Log a sweep report to W&B as one ``report`` run in the sweep's group (offline when no API key is set)."""

from __future__ import annotations

from pathlib import Path


def sweep_group(sweep_dir: Path) -> str:
    """The W&B group every job of a sweep shares (see charlit.run)."""
    return f"sweep-{Path(sweep_dir).resolve().name}"


def log_report_to_wandb(result: dict, sweep_dir: Path, project: str = "charlit", mode: str = "auto") -> None:
    import wandb

    from charlit.loggers import wandb_mode

    rows = result["rows"]
    columns = [c for c in result["columns"] if c != "run_dir"]
    run = wandb.init(
        project=project,
        group=sweep_group(sweep_dir),
        job_type="report",
        name=f"report-{Path(sweep_dir).name}",
        dir=str(result["markdown"].parent),
        mode=wandb_mode(mode),
        reinit="finish_previous",
    )
    try:
        table = wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])
        run.log({"sweep/report": table, **{f"sweep/{p.stem}": wandb.Image(str(p)) for p in result["plots"]}})
    finally:
        run.finish()
