"""Callbacks for what Lightning itself lacks."""

from lit_lm.callbacks.lr_schedule import OneCycleLR
from lit_lm.callbacks.loss_summary import LossSummary

__all__ = ["OneCycleLR", "LossSummary"]
