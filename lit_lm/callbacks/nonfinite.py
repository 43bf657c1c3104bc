"""Stop, with a checkpoint and a clear message, as soon as the training loss is NaN or infinite."""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(Callback):
    """Checks every micro-batch's loss before its backward pass; on NaN/inf, saves a checkpoint and stops.

    The check runs before the backward, so the bad loss never reaches the gradients nor the weights: the checkpoint
    holds the last good weights, optimizer state and schedule position, from which a run can resume with other
    settings. Under DDP any rank's bad loss stops every rank together.

    Args:
        dirpath: Where to write ``nonfinite-step<N>.ckpt``; None uses the ModelCheckpoint folder, or
            ``trainer.default_root_dir`` without one.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        bad_here = not bool(torch.isfinite(loss.detach()).all())
        bad = trainer.strategy.reduce_boolean_decision(bad_here, all=False) if trainer.world_size > 1 else bad_here
        if not bad:
            return
        value = f"{loss.item()}" if bad_here else "not finite on another device"
        folder = Path(self.dirpath or getattr(trainer.checkpoint_callback, "dirpath", None) or trainer.default_root_dir)
        path = folder / f"nonfinite-step{trainer.global_step}.ckpt"
        trainer.save_checkpoint(path)
        raise NonFiniteLossError(
            f"the training loss is {value} at optimizer step {trainer.global_step} "
            f"(micro-batch {trainer.fit_loop.total_batch_idx}): stopping. The weights from before this step are saved "
            f"in {path}. Lower model.optimizer.lr, clip gradients (trainer.gradient_clip_val), warm up for longer, or "
            f"train in precision 32-true or bf16-mixed instead of 16-mixed; then resume with --ckpt_path {path}."
        )
