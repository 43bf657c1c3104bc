"""A callback the DDP tests add to a real ``train.py`` run (``--trainer.callbacks+=tests.ddp_recorder.RowRecorder``):
each rank writes what it trained on to ``<folder>/rank<N>.json``.

Recorded per micro-batch: the hash of each row's input ids (before masking), in batch order, the micro-batch's loss
and the accumulation factor in force, and for a masked-LM module the masks its training step drew; the random state
the first masks are drawn from; at the end: a hash of the final weights, and the data card (whether this rank built
the store or reused it).
"""

import hashlib
import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


def row_hash(ids) -> str:
    """A row's identity: a hash of its token ids as int64."""
    return hashlib.sha1(torch.as_tensor(ids, dtype=torch.int64).numpy().tobytes()).hexdigest()[:16]


def row_bits(mask: torch.Tensor) -> list[str]:
    """A boolean [rows, length] mask as one string of "0" and "1" per row."""
    return ["".join("1" if x else "0" for x in row) for row in mask.cpu().tolist()]


def weights_hash(module: torch.nn.Module) -> str:
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


class RowRecorder(Callback):
    """Writes ``<folder>/rank<N>.json`` at the end of training: ``steps`` (one entry per micro-batch: the global step
    it belongs to, its rows' hashes, its loss, the accumulation factor and, for a masked-LM module, ``masks``: each
    draw of its training step, as one string per row of "1" where a token was chosen, ``masked``, and "1" where a
    token could be, ``maskable``), ``weights``, ``card`` and ``random_state`` (a hash of the random state the first
    [MASK] positions are drawn from).

    Args:
        folder: Where to write.
    """

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.steps: list[dict] = []
        self.random_state: str | None = None
        self._batch_ids: torch.Tensor | None = None
        self._masks: list[dict] = []

    def on_train_start(self, trainer, pl_module) -> None:
        """A masked-LM module's ``_mask`` is wrapped to record the masks its training step draws for the batch."""
        draw, masking = getattr(pl_module, "_mask", None), getattr(pl_module, "masking", None)
        if draw is None or masking is None:
            return

        def recording(input_ids, generator=None):
            inputs, labels = draw(input_ids, generator)
            ids = self._batch_ids  # the training batch's draw: not a validation's, nor that of a FLOP count's row
            if ids is not None and input_ids.shape == ids.shape and torch.equal(input_ids, ids):
                self._masks.append({"masked": row_bits(labels != -100),
                                    "maskable": row_bits(~torch.isin(input_ids, masking.special_ids))})
            return inputs, labels

        pl_module._mask = recording

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.random_state is None:  # the random state the first masks are drawn from (a resume's too)
            self.random_state = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()
        self._batch_ids, self._masks = batch["input_ids"], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.callback_metrics["train/loss"]  # as logged: not divided by the accumulation, as outputs are
        self.steps.append({"step": trainer.global_step, "rows": [row_hash(r) for r in batch["input_ids"].cpu()],
                           "loss": float(loss), "accumulation": trainer.accumulate_grad_batches,
                           **({"masks": self._masks} if self._masks else {})})
        self._batch_ids = None

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "world_size": trainer.world_size, "steps": self.steps, "random_state": self.random_state,
            "weights": weights_hash(pl_module), "card": trainer.datamodule.card,
            "store": str(trainer.datamodule.store_dir),
        }))
