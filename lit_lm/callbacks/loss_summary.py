"""Says at the end of training whether the loss fell: first tenth of the steps against the last tenth."""

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info


class LossSummary(Callback):
    """Collects ``train/loss`` each optimizer step and prints the mean of the first and last tenth at the end."""

    def __init__(self, metric: str = "train/loss") -> None:
        self.metric = metric
        self.losses: list[float] = []
        self._last_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:
            return  # still accumulating gradients: one value per optimizer step
        self._last_step = trainer.global_step
        value = trainer.callback_metrics.get(self.metric)
        if value is not None:
            self.losses.append(float(value))

    def summary(self) -> dict[str, float] | None:
        if len(self.losses) < 10:
            return None
        tenth = len(self.losses) // 10
        first = sum(self.losses[:tenth]) / tenth
        last = sum(self.losses[-tenth:]) / tenth
        return {"steps": len(self.losses), "first_tenth": first, "last_tenth": last}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        s = self.summary()
        if s is not None:
            rank_zero_info(
                f"{self.metric}: first tenth of {s['steps']} steps {s['first_tenth']:.3f} -> "
                f"last tenth {s['last_tenth']:.3f}"
            )
