"""A batch size that grows during training, through gradient accumulation, keyed to steps or to the time budget."""

import math
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lit_lm.callbacks.progress import ProgressKey, training_progress

RampMode = Literal["linear", "stepped"]


def micro_batch_rows(batch: Any) -> int:
    """Sequences in a micro-batch: the first dimension of ``input_ids`` (or of the batch itself)."""
    tensor = batch["input_ids"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (list, tuple)) else batch
    return int(tensor.shape[0])


class BatchSizeRamp(Callback):
    """Grows the effective batch from one micro-batch to ``target_batch_size`` sequences over the first
    ``ramp_fraction`` of the run by raising ``trainer.accumulate_grad_batches`` (cramming's batch-size ramp, Geiping &
    Goldstein 2022; Smith et al. 2018, "Don't decay the learning rate, increase the batch size").

    Lightning's ``GradientAccumulationScheduler`` changes accumulation only at epoch boundaries; pretraining is one
    epoch, so this callback changes it mid-epoch, on the trainer's own setting, so that everything else stays Lightning's:
    the loss is divided by the window's length, gradients are zeroed at each window's first micro-batch, and under
    DDP every backward but the window's last runs inside ``no_sync`` (no gradient all-reduce between accumulation
    steps). Lightning places the windows by the batch index within the epoch (a window starts where
    ``batch_idx % accumulate_grad_batches == 0``), so a new factor is taken only at a window boundary where it keeps that
    rule true: the largest factor, no larger than the schedule's target, that divides the boundary's batch index.
    The factor therefore never overshoots the schedule and catches up with it within a few windows (within one in
    ``stepped`` mode, whose factors are powers of two). Changing the factor anywhere else would skip a window's
    zeroing of the gradients, so an already applied window's gradients would leak into the next step.

    The factor is part of the checkpoint, so a resumed run continues where it was; it is logged as
    ``train/batch_size`` (sequences per optimizer step, across all devices).

    Args:
        target_batch_size: Effective batch, in sequences across all devices, from the end of the ramp on; a
            multiple of data.batch_size x number of devices. cramming: 8192 (at 128 tokens each).
        ramp_fraction: Fraction of the run (see ``key``) after which the target is reached; cramming 0.6.
        mode: 'linear' adds micro-batches in proportion to progress; 'stepped' doubles the accumulation factor at equal
            intervals of the ramp (1, 2, 4, ... then the target).
        key: Which clock drives the ramp: 'auto' (whichever limit ends the run), 'steps' or 'time' (the budget).
    """

    def __init__(
        self,
        target_batch_size: int,
        ramp_fraction: float = 0.6,
        mode: RampMode = "linear",
        key: ProgressKey = "auto",
    ) -> None:
        if target_batch_size < 1:
            raise ValueError(f"BatchSizeRamp.target_batch_size must be >= 1, got {target_batch_size}.")
        if not 0.0 <= ramp_fraction <= 1.0:
            raise ValueError(f"BatchSizeRamp.ramp_fraction must be in [0, 1], got {ramp_fraction}.")
        if mode not in ("linear", "stepped"):
            raise ValueError(f"BatchSizeRamp.mode must be 'linear' or 'stepped', got {mode!r}.")
        if key not in ("auto", "steps", "time"):
            raise ValueError(f"BatchSizeRamp.key must be 'auto', 'steps' or 'time', got {key!r}.")
        self.target_batch_size = target_batch_size
        self.ramp_fraction = ramp_fraction
        self.mode = mode
        self.key = key
        self.accumulation = 1  # the factor in force; saved in checkpoints
        self.max_accumulation: int | None = None  # the target factor, known once the micro-batch size is

    # ---- the schedule ----
    def target_accumulation(self, progress: float) -> int:
        """The accumulation factor the schedule asks for at ``progress`` in [0, 1]."""
        assert self.max_accumulation is not None
        top = self.max_accumulation
        ramp = 1.0 if self.ramp_fraction == 0 else min(max(progress, 0.0) / self.ramp_fraction, 1.0)
        if self.mode == "linear":
            return min(top, 1 + math.floor((top - 1) * ramp + 1e-9))
        doublings = math.ceil(math.log2(top)) if top > 1 else 0
        stage = min(doublings, math.floor(doublings * ramp + 1e-9))
        return min(top, 2**stage)

    @staticmethod
    def aligned_accumulation(current: int, target: int, batch_idx: int) -> int:
        """The largest factor in [current, target] that divides ``batch_idx``, so Lightning's windows stay aligned."""
        return max((k for k in range(current, target + 1) if batch_idx % k == 0), default=current)

    # ---- Lightning hooks ----
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"BatchSizeRamp sets trainer.accumulate_grad_batches itself; remove "
                f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} or the BatchSizeRamp callback."
            )
        if not pl_module.automatic_optimization:
            raise ValueError("BatchSizeRamp needs Lightning's automatic optimization (the module turned it off).")
        if trainer.strategy.handles_gradient_accumulation:
            raise ValueError(
                f"BatchSizeRamp cannot change the accumulation of the {type(trainer.strategy).__name__} strategy, "
                "which fixes it at start; use a fixed trainer.accumulate_grad_batches instead."
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        training_progress(trainer, self.key, "BatchSizeRamp")  # fail now if there is no limit to key the ramp to
        trainer.accumulate_grad_batches = self.accumulation  # 1, or the factor restored from a checkpoint

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx % trainer.accumulate_grad_batches:
            return  # inside a window: never change the factor there
        rows = micro_batch_rows(batch)
        if self.max_accumulation is None:
            per_micro_batch = rows * trainer.world_size
            if self.target_batch_size % per_micro_batch:
                raise ValueError(
                    f"BatchSizeRamp.target_batch_size ({self.target_batch_size}) must be a multiple of the sequences "
                    f"in one micro-batch across devices (data.batch_size {rows} x {trainer.world_size} device(s) = "
                    f"{per_micro_batch}); set it to {max(1, round(self.target_batch_size / per_micro_batch)) * per_micro_batch}."
                )
            self.max_accumulation = self.target_batch_size // per_micro_batch
        target = self.target_accumulation(training_progress(trainer, self.key, "BatchSizeRamp"))
        if target > self.accumulation:
            new = self.aligned_accumulation(self.accumulation, target, batch_idx)
            if new != self.accumulation and new == self.max_accumulation:
                rank_zero_info(f"BatchSizeRamp: reached the target batch of {self.target_batch_size} sequences "
                               f"(accumulating {new} micro-batches) at step {trainer.global_step}")
            self.accumulation = new
        trainer.accumulate_grad_batches = self.accumulation
        pl_module.log("train/batch_size", float(rows * self.accumulation * trainer.world_size))

    def state_dict(self) -> dict[str, Any]:
        return {"accumulation": self.accumulation}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.accumulation = int(state_dict.get("accumulation", 1))
