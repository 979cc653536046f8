"""Training objectives, one LightningModule plugin per method, looked up in :data:`OBJECTIVES`."""

from charlit.objectives.registry import OBJECTIVES

__all__ = ["OBJECTIVES"]
