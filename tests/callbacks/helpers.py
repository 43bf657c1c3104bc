"""Tiny LightningModules and trainers for callback tests: a linear model on token-like batches."""

import lightning as L
import torch


def token_batches(n: int, rows: int = 2, length: int = 8, seed: int = 0) -> list[dict]:
    """``n`` single-row samples with random ids and random padding, so token counts differ between batches."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n * rows):
        mask = (torch.rand(length, generator=g) > 0.3).long()
        mask[0] = 1
        samples.append({"input_ids": torch.randint(0, 9, (length,), generator=g), "attention_mask": mask})
    return samples


class LinearOnTokens(L.LightningModule):
    """A linear model whose loss depends on each batch; records what every training step saw."""

    def __init__(self, n_batches: int = 200, rows: int = 2, lr: float = 0.1) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)
        self.n_batches, self.rows, self.lr = n_batches, rows, lr
        self.seen: list[dict] = []  # per micro-batch: index, accumulation, lr, tokens

    def loss(self, batch: dict) -> torch.Tensor:
        x = batch["input_ids"].float() * batch["attention_mask"]
        return (self.layer(x) - 1).pow(2).mean()

    def training_step(self, batch, batch_idx):
        self.seen.append({"batch_idx": batch_idx, "accumulation": self.trainer.accumulate_grad_batches,
                          "lr": self.trainer.optimizers[0].param_groups[0]["lr"], "step": self.trainer.global_step,
                          "tokens": int(batch["attention_mask"].sum()), "batch": batch})
        return self.loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(token_batches(self.n_batches, self.rows), batch_size=self.rows)


def quiet_trainer(tmp_path, **kwargs) -> L.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp_path, **kwargs)


class FakeClock:
    """Replaces the clock of Lightning's Timer (the budget) by one that moves only when told to."""

    def __init__(self, monkeypatch, start: float = 1000.0) -> None:
        self.now = start
        monkeypatch.setattr("lightning.pytorch.callbacks.timer.time", self)

    def monotonic(self) -> float:
        return self.now


class Ticking(LinearOnTokens):
    """Each training step takes exactly ``seconds`` on the fake clock."""

    def __init__(self, clock: FakeClock, seconds: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clock, self.seconds = clock, seconds

    def training_step(self, batch, batch_idx):
        self.clock.now += self.seconds
        return super().training_step(batch, batch_idx)
