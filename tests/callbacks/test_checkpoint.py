"""ModelCheckpoint: last.ckpt holds the state at the end of training, however the run ended."""

import lightning.pytorch as pl
import pytest
import torch

from lit_lm.callbacks import ModelCheckpoint
from tests.callbacks.helpers import FakeClock, LinearOnTokens, Ticking, quiet_trainer


def final_step(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.parametrize("checkpoint_class, expected", [(ModelCheckpoint, 7), (pl.callbacks.ModelCheckpoint, 5)],
                         ids=["lit-lm", "lightning"])
def test_last_checkpoint_after_max_steps_between_periodic_saves(tmp_path, checkpoint_class, expected):
    """Ours writes the final step; Lightning's (the reason ours exists) keeps the last periodic save."""
    checkpoint = checkpoint_class(dirpath=tmp_path, every_n_train_steps=5, save_last=True,
                                  enable_version_counter=False)
    trainer = quiet_trainer(tmp_path, max_steps=7, callbacks=[checkpoint], enable_checkpointing=True)
    trainer.fit(LinearOnTokens())
    assert final_step(tmp_path / "last.ckpt") == expected


def test_last_checkpoint_when_the_time_budget_ends_the_run(tmp_path, monkeypatch):
    module = Ticking(FakeClock(monkeypatch), seconds=10)  # every step takes 10 s of the 60 s budget
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_last=True, enable_version_counter=False)
    trainer = quiet_trainer(tmp_path, max_time={"seconds": 60}, callbacks=[checkpoint],
                            enable_checkpointing=True)
    trainer.fit(module)
    assert 4 < trainer.global_step < 200 and trainer.global_step % 4 != 0
    assert final_step(tmp_path / "last.ckpt") == trainer.global_step


def test_no_extra_save_when_the_last_step_was_just_saved(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5, save_last=True, enable_version_counter=False)
    trainer = quiet_trainer(tmp_path, max_steps=10, callbacks=[checkpoint], enable_checkpointing=True)
    trainer.fit(LinearOnTokens())
    assert final_step(tmp_path / "last.ckpt") == 10
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=0-step=10.ckpt", "last.ckpt"]
