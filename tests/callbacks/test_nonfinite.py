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
