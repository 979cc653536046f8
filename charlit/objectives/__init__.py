"""Training objectives, one LightningModule plugin per method (see :mod:`charlit.objectives.registry`)."""
from charlit.objectives.registry import available, get_objective, register

__all__ = ["available", "get_objective", "register"]
