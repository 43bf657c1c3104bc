"""Lightning's ModelCheckpoint, plus the state at the end of training in ``last.ckpt``."""

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (every argument is the same) that, with ``save_last``, also writes
    ``last.ckpt`` when training ends between two periodic saves.

    A time budget or ``max_steps`` rarely ends a run on a multiple of ``every_n_train_steps``; Lightning then leaves
    the last *periodic* save as ``last.ckpt``, and the final steps of the run are missing from it (up to
    ``every_n_train_steps - 1`` optimizer steps). This writes the final state instead, so ``last.ckpt`` is what the
    run trained, for evaluation, export and ``--ckpt_path last``.
    """

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
