from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_lm.callbacks import NonFiniteLossError, StopOnNonFiniteLoss
from tests.callbacks.helpers import LinearOnTokens, quiet_trainer


class DivergesAt(LinearOnTokens):
    def __init__(self, micro_batch: int):
        super().__init__()
        self.bad_at = micro_batch

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if len(self.seen) > self.bad_at else loss


def test_a_nan_loss_stops_training_with_a_message_and_the_last_good_weights(tmp_path):
    model = DivergesAt(micro_batch=5)
    checkpoints = tmp_path / "checkpoints"
    trainer = quiet_trainer(tmp_path, max_steps=20, accumulate_grad_batches=2, enable_checkpointing=True,
                            callbacks=[StopOnNonFiniteLoss(), ModelCheckpoint(dirpath=checkpoints)])
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at optimizer step 2 .*model.optimizer.lr.*--ckpt_path"):
        trainer.fit(model)
    assert len(model.seen) == 6  # stopped at the first bad micro-batch
    saved = torch.load(checkpoints / "nonfinite-step2.ckpt", weights_only=False)
    assert saved["global_step"] == 2
    weights = saved["state_dict"]["layer.weight"]
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights, model.layer.weight.detach())  # the bad loss never reached the weights


def test_without_a_checkpoint_folder_the_weights_go_to_the_run_root_or_where_asked(tmp_path):
    trainer = quiet_trainer(tmp_path, max_steps=20, callbacks=[StopOnNonFiniteLoss()])  # no ModelCheckpoint
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at optimizer step 3"):
        trainer.fit(DivergesAt(micro_batch=3))
    assert (tmp_path / "nonfinite-step3.ckpt").exists()
    trainer = quiet_trainer(tmp_path, max_steps=20, callbacks=[StopOnNonFiniteLoss(dirpath=str(tmp_path / "nan"))])
    with pytest.raises(NonFiniteLossError):
        trainer.fit(DivergesAt(micro_batch=2))
    assert (tmp_path / "nan" / "nonfinite-step2.ckpt").exists()


class TwoRanks:
    """A strategy of 2 ranks whose other rank says ``other_bad``; records the all-reduce of the decision."""

    def __init__(self, other_bad: bool) -> None:
        self.other_bad, self.calls = other_bad, []

    def reduce_boolean_decision(self, decision, all=True):
        self.calls.append((decision, all))
        return (decision and self.other_bad) if all else (decision or self.other_bad)


def rank_trainer(strategy, tmp_path):
    saved = []
    trainer = SimpleNamespace(world_size=2, strategy=strategy, global_step=7, checkpoint_callback=None,
                              default_root_dir=str(tmp_path), fit_loop=SimpleNamespace(total_batch_idx=15),
                              save_checkpoint=saved.append)
    return trainer, saved


def test_a_bad_loss_on_another_rank_stops_every_rank(tmp_path):
    """Any rank's bad loss stops all: the decision is all-reduced with 'any' (all=False)."""
    trainer, saved = rank_trainer(TwoRanks(other_bad=True), tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"the training loss is not finite on another device at optimizer "
                                                 r"step 7 \(micro-batch 15\)"):
        StopOnNonFiniteLoss().on_before_backward(trainer, None, torch.tensor(1.5))
    assert trainer.strategy.calls == [(False, False)] and saved == [tmp_path / "nonfinite-step7.ckpt"]
    fine, saved = rank_trainer(TwoRanks(other_bad=False), tmp_path)
    StopOnNonFiniteLoss().on_before_backward(fine, None, torch.tensor(1.5))  # every rank finite: train on
    assert fine.strategy.calls == [(False, False)] and saved == []
    here, saved = rank_trainer(TwoRanks(other_bad=False), tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"the training loss is inf at optimizer step 7"):
        StopOnNonFiniteLoss().on_before_backward(here, None, torch.tensor(float("inf")))
    assert here.strategy.calls == [(True, False)]
