"""A callback the DDP tests add to a real ``train.py`` run (``--trainer.callbacks+=tests.ddp_recorder.RowRecorder``):
each rank writes what it trained on to ``<folder>/rank<N>.json``.

Recorded per micro-batch: the hash of each row's input ids (before masking), in batch order, the micro-batch's loss
and the accumulation factor in force; the random state the first masks are drawn from; at the end: a hash of the
final weights, and the data card (whether this rank built the store or reused it).
"""

import hashlib
import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


def row_hash(ids) -> str:
    """A row's identity: a hash of its token ids as int64."""
    return hashlib.sha1(torch.as_tensor(ids, dtype=torch.int64).numpy().tobytes()).hexdigest()[:16]


def weights_hash(module: torch.nn.Module) -> str:
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


class RowRecorder(Callback):
    """Writes ``<folder>/rank<N>.json`` at the end of training: ``steps`` (one entry per micro-batch: the global step
    it belongs to, its rows' hashes, its loss and the accumulation factor), ``weights``, ``card`` and
    ``random_state`` (a hash of the random state the first [MASK] positions are drawn from).

    Args:
        folder: Where to write.
    """

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.steps: list[dict] = []
        self.random_state: str | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.random_state is None:  # the random state the first masks are drawn from (a resume's too)
            self.random_state = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.callback_metrics["train/loss"]  # as logged: not divided by the accumulation, as outputs are
        self.steps.append({"step": trainer.global_step, "rows": [row_hash(r) for r in batch["input_ids"].cpu()],
                           "loss": float(loss), "accumulation": trainer.accumulate_grad_batches})

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "world_size": trainer.world_size, "steps": self.steps, "random_state": self.random_state,
            "weights": weights_hash(pl_module), "card": trainer.datamodule.card,
            "store": str(trainer.datamodule.store_dir),
        }))
