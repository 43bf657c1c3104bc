"""Lightning's ModelCheckpoint, plus the state at the end of training in ``last.ckpt``, and a refusal to write a
new run's checkpoints among another run's."""

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from lit_lm.runs import ResumeError


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (every argument is the same) that, with ``save_last``, also writes
    ``last.ckpt`` when training ends between two periodic saves, and never mixes two runs in one folder.

    A time budget or ``max_steps`` rarely ends a run on a multiple of ``every_n_train_steps``; Lightning then leaves
    the last *periodic* save as ``last.ckpt``, and the final steps of the run are missing from it (up to
    ``every_n_train_steps - 1`` optimizer steps). This writes the final state instead, so ``last.ckpt`` is what the
    run trained, for evaluation, export and ``--ckpt_path last``.

    Checkpoints are written atomically (``lit_lm.checkpoint.AtomicCheckpointIO``, installed here when the strategy
    uses Lightning's plain ``TorchCheckpointIO``): a run killed while saving keeps its previous checkpoint whole.

    Leave ``dirpath`` unset to checkpoint into the run's own logger folder (``.../version_N/checkpoints``). A fixed
    ``dirpath`` that already holds checkpoints is refused unless the run resumes from a checkpoint.
    """

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        from lit_lm.checkpoint import AtomicCheckpointIO  # here: lit_lm.checkpoint imports the models

        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not DeepSpeed's, FSDP's or a user's own
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_fit_start(trainer, pl_module)
        folder = Path(self.dirpath) if self.dirpath else None
        if trainer.ckpt_path is None and folder is not None and any(folder.glob("*.ckpt")):
            raise ResumeError(
                f"{folder} already holds another run's checkpoints. Resume that run with --ckpt_path last, or leave "
                "the ModelCheckpoint's dirpath unset so that every run checkpoints into its own version folder.")
        rank_zero_info(f"checkpoints: {folder}")

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs, batch,
                           batch_idx: int) -> None:
        # Never inside an accumulation window: such a checkpoint holds none of the window's gradients but counts its
        # micro-batches as trained, so a resume from it skips their rows. Lightning saves there when a resumed run
        # starts on a multiple of every_n_train_steps with a factor above 1 (its last saved step is not restored).
        should_accumulate = getattr(trainer.fit_loop.epoch_loop, "_should_accumulate", None)
        if should_accumulate is not None and should_accumulate():
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_save_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", checkpoint: dict) -> None:
        """A checkpoint of a run that stopped before its data ran out (a budget, ``max_steps``) records the epoch as
        under way, as a save from inside the epoch does. Lightning counts an epoch as done whenever its loop ends, so
        a resume with a larger ``max_steps`` or ``max_time`` would otherwise train nothing ("max_epochs=1 reached")
        though rows of the epoch remain; it now goes on with them."""
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if trainer.state.fn == TrainerFn.FITTING and "loops" in checkpoint \
                and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            reopen_epoch(checkpoint)


def reopen_epoch(checkpoint: dict) -> None:
    """Mark the checkpoint's last epoch as started but not processed nor completed (``epoch`` the completed
    count), as Lightning writes them in a save from inside the epoch; a checkpoint from inside one is unchanged."""
    progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]
    for counts in (progress["total"], progress["current"]):
        for key in ("processed", "completed"):
            counts[key] = min(counts[key], max(counts["started"] - 1, 0))
    checkpoint["epoch"] = progress["current"]["completed"]
