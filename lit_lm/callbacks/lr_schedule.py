"""Learning-rate schedules as callbacks: a pure function of training progress, so resuming needs no state."""

import lightning as L
from lightning.pytorch.callbacks import Callback


class OneCycleLR(Callback):
    """Linear warmup to the optimizer's ``lr``, then linear decay (a one-cycle "triangle", Smith & Topin 2017).

    ``warmup_fraction=0.5`` is the symmetric triangle cramming uses; ``warmup_fraction=0.01`` with a decay to 0
    is BERT's warmup-then-linear-decay. Progress is ``global_step / trainer.estimated_stepping_batches``.

    Args:
        warmup_fraction: Fraction of the optimizer steps spent rising to the peak.
        initial_lr_ratio: Learning rate at step 0, as a fraction of the peak.
        final_lr_ratio: Learning rate at the last step, as a fraction of the peak.
    """

    def __init__(self, warmup_fraction: float = 0.5, initial_lr_ratio: float = 0.0, final_lr_ratio: float = 0.0):
        if not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(f"OneCycleLR.warmup_fraction must be in [0, 1], got {warmup_fraction}.")
        if not (0.0 <= initial_lr_ratio <= 1.0 and 0.0 <= final_lr_ratio <= 1.0):
            raise ValueError("OneCycleLR.initial_lr_ratio and final_lr_ratio must be in [0, 1].")
        self.warmup_fraction = warmup_fraction
        self.initial_lr_ratio = initial_lr_ratio
        self.final_lr_ratio = final_lr_ratio
        self._peaks: list[list[float]] = []

    def factor(self, progress: float) -> float:
        """Multiplier of the peak learning rate at ``progress`` in [0, 1]."""
        progress = min(max(progress, 0.0), 1.0)
        if progress < self.warmup_fraction:
            return self.initial_lr_ratio + (1 - self.initial_lr_ratio) * progress / self.warmup_fraction
        if self.warmup_fraction >= 1.0:
            return 1.0
        return 1.0 - (1 - self.final_lr_ratio) * (progress - self.warmup_fraction) / (1 - self.warmup_fraction)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._peaks = [[group.setdefault("peak_lr", group["lr"]) for group in opt.param_groups]
                       for opt in trainer.optimizers]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        total = max(1, int(trainer.estimated_stepping_batches))
        factor = self.factor(trainer.global_step / total)
        for opt, peaks in zip(trainer.optimizers, self._peaks):
            for group, peak in zip(opt.param_groups, peaks):
                group["lr"] = peak * factor
        pl_module.log("train/lr", trainer.optimizers[0].param_groups[0]["lr"])
