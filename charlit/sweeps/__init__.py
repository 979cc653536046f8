"""Sweep reports: aggregate the jobs of a Hydra multirun into one table and plots."""

from charlit.sweeps.report import collect_jobs, write_report

__all__ = ["collect_jobs", "write_report"]
