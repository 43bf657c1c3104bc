"""Scores a fixed held-out set at evenly spaced points of a run: the loss curve that compares across runs."""

import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import RunningStage

from lit_lm.callbacks.progress import budget_timer, training_progress
from lit_lm.callbacks.sharding import refuse_sharded_weights
from lit_lm.callbacks.throughput import ThroughputMFU
from lit_lm.heldout import HeldOutSet


class HeldOutLoss(Callback):
    """Logs ``heldout/loss`` on a ``lit_lm.heldout.HeldOutSet`` file ``points`` times, evenly over the run's budget
    (``trainer.max_time``, or its step limit), and once more when training ends, with ``heldout/train_seconds``
    (the budget clock) and ``heldout/tokens_seen`` (ThroughputMFU's count, when the run has one) beside it.

    Every run of an ablation scores the same sequences with the same masks, whatever masking it trained with, so
    the curves compare. The budget clock is paused while scoring: a run loses no training time to it. Scores go
    straight to the run's loggers (metrics.csv, the wandb dashboard, whose summary then holds the final one).

    Args:
        path: The held-out set (``HeldOutSet.save``; the ablation runner writes ``OUT/heldout.pt``).
        points: Scores during training, at 1/points, 2/points, ... of the budget.
        batch_size: Sequences per forward pass while scoring.
    """

    def __init__(self, path: str, points: int = 10, batch_size: int = 64) -> None:
        if points < 1 or batch_size < 1:
            raise ValueError(f"HeldOutLoss.points and batch_size must be >= 1, got {points} and {batch_size}.")
        self.path, self.points, self.batch_size = Path(path), points, batch_size
        self.scored_points = 0  # saved in checkpoints, so a resumed run continues the schedule
        self.heldout: HeldOutSet | None = None
        self.last_scored_step: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        refuse_sharded_weights(trainer, "HeldOutLoss")
        self.heldout = HeldOutSet.load(self.path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        progress = training_progress(trainer, owner="HeldOutLoss")
        if self.scored_points < self.points and progress >= (self.scored_points + 1) / self.points:
            self.scored_points = int(progress * self.points)
            self.score(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self.last_scored_step:  # the final weights, unless the last point just scored them
            self.score(trainer, pl_module)

    def score(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        if not trainer.is_global_zero or self.heldout is None:
            return None
        start = time.monotonic()
        loss = self.heldout.score(pl_module.model, self.batch_size)
        timer = budget_timer(trainer)
        if timer is not None and timer.start_time() is not None and timer.end_time() is None:
            timer._start_time[RunningStage.TRAINING] += time.monotonic() - start  # pause the budget clock
        metrics = {"heldout/loss": loss, "heldout/train_seconds": timer.time_elapsed() if timer else float("nan")}
        throughput = next((c for c in trainer.callbacks if isinstance(c, ThroughputMFU)), None)
        if throughput is not None:
            metrics["heldout/tokens_seen"] = float(throughput.tokens_seen)
        self.last_scored_step = trainer.global_step
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"scored_points": self.scored_points}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scored_points = int(state_dict.get("scored_points", 0))
