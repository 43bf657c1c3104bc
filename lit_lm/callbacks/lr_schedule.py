"""Learning-rate schedules as callbacks: a pure function of training progress, so resuming needs no state."""

import lightning as L
from lightning.pytorch.callbacks import Callback

from lit_lm.callbacks.progress import ProgressKey, training_progress


class OneCycleLR(Callback):
    """Linear warmup to the optimizer's ``lr``, then linear decay (a one-cycle "triangle", Smith & Topin 2017).

    The shape is set by three numbers, the clock by ``key``:

    - ``warmup_fraction=0.5``: the symmetric triangle, up for half the run and down for half;
    - ``warmup_fraction=0.75, initial_lr_ratio=0.25, key='time'``: cramming's budget triangle (Geiping & Goldstein
      2022), which starts at a quarter of the peak, peaks at 75% of the wall-clock budget and falls to 0 at its end;
    - ``warmup_fraction=0.01``: BERT's warmup then linear decay to 0 (Devlin et al. 2018).

    Progress is the fraction of the run done (``lit_lm.callbacks.progress``): of ``trainer.max_time`` with
    ``key='time'``, of the optimizer steps or training batches with ``key='steps'``, and of whichever limit ends the
    run first with ``key='auto'``. It does not depend on the batch size, so a batch-size ramp does not bend it.
    The rate is set once per optimizer step, at the first micro-batch of each accumulation window, and logged as
    ``train/lr``. The peak is the optimizer's configured ``lr``, also when resuming from a checkpoint.

    Args:
        warmup_fraction: Fraction of the run spent rising to the peak.
        initial_lr_ratio: Learning rate at the start, as a fraction of the peak.
        final_lr_ratio: Learning rate at the end, as a fraction of the peak.
        key: Which clock drives the schedule: 'auto', 'steps' or 'time'.
    """

    def __init__(
        self,
        warmup_fraction: float = 0.5,
        initial_lr_ratio: float = 0.0,
        final_lr_ratio: float = 0.0,
        key: ProgressKey = "auto",
    ):
        if not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(f"OneCycleLR.warmup_fraction must be in [0, 1], got {warmup_fraction}.")
        if not (0.0 <= initial_lr_ratio <= 1.0 and 0.0 <= final_lr_ratio <= 1.0):
            raise ValueError("OneCycleLR.initial_lr_ratio and final_lr_ratio must be in [0, 1].")
        if key not in ("auto", "steps", "time"):
            raise ValueError(f"OneCycleLR.key must be 'auto', 'steps' or 'time', got {key!r}.")
        self.warmup_fraction = warmup_fraction
        self.initial_lr_ratio = initial_lr_ratio
        self.final_lr_ratio = final_lr_ratio
        self.key = key
        self._peaks: list[list[float]] = []

    def factor(self, progress: float) -> float:
        """Multiplier of the peak learning rate at ``progress`` in [0, 1]."""
        progress = min(max(progress, 0.0), 1.0)
        if progress < self.warmup_fraction:
            return self.initial_lr_ratio + (1 - self.initial_lr_ratio) * progress / self.warmup_fraction
        if self.warmup_fraction >= 1.0:
            return 1.0
        return 1.0 - (1 - self.final_lr_ratio) * (progress - self.warmup_fraction) / (1 - self.warmup_fraction)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the configured rates, read before a checkpoint's optimizer state is restored: a run resumed with another
        # model.optimizer.lr follows the new peak
        self._peaks = [[group["lr"] for group in opt.param_groups] for opt in trainer.optimizers]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        training_progress(trainer, self.key, "OneCycleLR")  # fail now, not after the first batch, if unkeyed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx % trainer.accumulate_grad_batches:
            return  # inside an accumulation window: the rate for this window's step is already set
        factor = self.factor(training_progress(trainer, self.key, "OneCycleLR"))
        for opt, peaks in zip(trainer.optimizers, self._peaks):
            for group, peak in zip(opt.param_groups, peaks):
                group["lr"] = peak * factor
        pl_module.log("train/lr", trainer.optimizers[0].param_groups[0]["lr"])
