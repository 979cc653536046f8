"""A Hydra callback that writes the sweep report when a multirun ends (registered in conf/train.yaml)."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback


class SweepReport(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        from charlit.sweeps.publish import log_report_to_wandb
        from charlit.sweeps.report import write_report

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            result = write_report(sweep_dir)
        except (ValueError, FileNotFoundError) as err:  # e.g. every job failed: say so, keep Hydra's exit status
            print(f"[charlit] no sweep report: {err}", file=sys.stderr)
            return
        print(f"[charlit] sweep report ({len(result['rows'])} jobs): {result['markdown']}", flush=True)
        if config.get("logger", {}).get("name") == "wandb":
            log_report_to_wandb(
                result,
                sweep_dir,
                project=str(config.logger.get("project", "charlit")),
                mode=str(config.logger.get("mode", "auto")),
            )
