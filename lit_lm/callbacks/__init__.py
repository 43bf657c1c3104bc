"""Callbacks for what Lightning itself lacks, and the training-budget helpers they share."""

from lit_lm.callbacks.attention import AttentionDiagnostics
from lit_lm.callbacks.batch_size import BatchSizeRamp
from lit_lm.callbacks.checkpoint import ModelCheckpoint
from lit_lm.callbacks.heldout import HeldOutLoss
from lit_lm.callbacks.loss_summary import LossSummary
from lit_lm.callbacks.lr_schedule import OneCycleLR
from lit_lm.callbacks.nonfinite import NonFiniteLossError, StopOnNonFiniteLoss
from lit_lm.callbacks.samples import TextSamples
from lit_lm.callbacks.sequence_length import SequenceLengthWarmup
from lit_lm.callbacks.throughput import ThroughputMFU

__all__ = ["AttentionDiagnostics", "BatchSizeRamp", "HeldOutLoss", "LossSummary", "ModelCheckpoint",
           "NonFiniteLossError", "OneCycleLR", "SequenceLengthWarmup", "StopOnNonFiniteLoss", "TextSamples",
           "ThroughputMFU"]
