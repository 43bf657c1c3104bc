"""A 2-process CPU (gloo) DDP run with a batch-size ramp; each rank writes what it saw to <out>/rank<N>.json.

Launched by tests/callbacks/test_batch_size.py; Lightning's DDP strategy starts rank 1 by running this script again.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root, also in the second process
from lit_lm.callbacks import BatchSizeRamp, ThroughputMFU  # noqa: E402


class Recorder(L.LightningModule):
    """Records, after every backward, whether DDP was set to all-reduce and what the gradient looks like."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)
        self.records: list[dict] = []
        self.local_tokens = 0

    def training_step(self, batch, batch_idx):
        self.local_tokens += int(batch["attention_mask"].sum())
        self._batch_idx = batch_idx
        x = batch["input_ids"].float() * batch["attention_mask"]
        return self.layer(x).pow(2).mean()

    def on_after_backward(self) -> None:
        self.records.append({
            "batch_idx": self._batch_idx,
            "accumulation": self.trainer.accumulate_grad_batches,
            "sync": bool(self.trainer.model.require_backward_grad_sync),  # False inside DDP's no_sync
            "grad": self.layer.weight.grad.sum().item(),
            "step": self.trainer.global_step,
        })

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        rows = [{"input_ids": torch.randint(0, 9, (8,), generator=g),
                 "attention_mask": (torch.rand(8, generator=g) > 0.3).long()} for _ in range(400)]
        return torch.utils.data.DataLoader(rows, batch_size=2)


def main(out: Path) -> None:
    torch.manual_seed(0)
    model = Recorder()
    throughput = ThroughputMFU(window=2, peak_flops=1e9)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=12,
        callbacks=[BatchSizeRamp(target_batch_size=16, ramp_fraction=0.5), throughput],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({
        "records": model.records, "local_tokens": model.local_tokens, "tokens_seen": throughput.tokens_seen,
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
