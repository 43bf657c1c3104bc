"""ModelCheckpoint: last.ckpt holds the state at the end of training, however the run ended."""

import lightning.pytorch as pl
import pytest
import torch

from lit_lm.callbacks import ModelCheckpoint
from lit_lm.runs import ResumeError
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


def test_a_fixed_folder_with_another_runs_checkpoints_is_refused_unless_resuming(tmp_path):
    folder = tmp_path / "checkpoints"

    def fit(max_steps, ckpt_path=None):
        checkpoint = ModelCheckpoint(dirpath=folder, save_last=True, save_on_exception=True)
        trainer = quiet_trainer(tmp_path, max_steps=max_steps, callbacks=[checkpoint], enable_checkpointing=True)
        trainer.fit(LinearOnTokens(), ckpt_path=ckpt_path)
        return trainer

    fit(3)
    first = (folder / "last.ckpt").read_bytes()
    with pytest.raises(ResumeError, match=r"already holds another run's checkpoints.*--ckpt_path last"):
        fit(3)  # a fresh run into the same folder
    assert (folder / "last.ckpt").read_bytes() == first  # the refusal saved nothing over the first run
    assert fit(5, ckpt_path=str(folder / "last.ckpt")).global_step == 5  # resuming it is allowed
