import lightning as L
import pytest
import torch

from lit_lm.callbacks import OneCycleLR


def test_triangle_rises_to_the_peak_at_half_and_falls_to_zero():
    s = OneCycleLR(warmup_fraction=0.5)
    assert [s.factor(p) for p in (0.0, 0.25, 0.5, 0.75, 1.0)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])


def test_bert_style_short_warmup_then_linear_decay_to_a_floor():
    s = OneCycleLR(warmup_fraction=0.1, initial_lr_ratio=0.0, final_lr_ratio=0.1)
    assert s.factor(0.05) == pytest.approx(0.5)
    assert s.factor(0.1) == pytest.approx(1.0)
    assert s.factor(1.0) == pytest.approx(0.1)
    assert s.factor(0.55) == pytest.approx(0.55)


def test_rejects_out_of_range_fractions():
    with pytest.raises(ValueError, match="warmup_fraction"):
        OneCycleLR(warmup_fraction=1.5)


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.lrs = []

    def training_step(self, batch, batch_idx):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(20, 2)), batch_size=1)


def test_sets_the_learning_rate_every_step_in_a_real_fit(tmp_path):
    model = Tiny()
    trainer = L.Trainer(max_steps=10, callbacks=[OneCycleLR(0.5)], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model)
    assert model.lrs == pytest.approx([0.1 * f for f in (0, .2, .4, .6, .8, 1, .8, .6, .4, .2)])
