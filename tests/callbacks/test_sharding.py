"""Callbacks that run the model on rank 0 alone stop at setup, with one clear message, under a strategy that shards
the weights (FSDP, DeepSpeed ZeRO stage 3), and are left alone under DDP."""

import copy
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from lit_lm.callbacks import AttentionDiagnostics, HeldOutLoss, TextSamples
from lit_lm.callbacks.sharding import shards_weights
from lit_lm.heldout import HeldOutSet


class DeepSpeedStrategy:  # stands for Lightning's (deepspeed is not installed): only the name and the stage matter
    def __init__(self, stage: int) -> None:
        self.zero_stage_3 = stage == 3


def test_which_strategies_shard_the_weights():
    assert shards_weights(FSDPStrategy())
    assert shards_weights(DeepSpeedStrategy(3))
    assert not shards_weights(DeepSpeedStrategy(2))
    assert not shards_weights(DDPStrategy())

    class DeepSpeedStrategyOfUnknownStage:  # one that does not say its stage: not taken for stage 3
        pass

    assert not shards_weights(DeepSpeedStrategyOfUnknownStage())


@pytest.mark.parametrize("callback", [AttentionDiagnostics(), TextSamples(), HeldOutLoss("missing.pt")],
                         ids=lambda c: type(c).__name__)
def test_a_rank_zero_callback_refuses_sharded_weights_at_setup(callback):
    name = type(callback).__name__
    with pytest.raises(ValueError, match=rf"{name} runs the model on rank 0 alone.*FSDPStrategy.*"
                                         rf"--trainer.callbacks.{name}=null\), or train with "
                                         r"configs/trainer/ddp.yaml \(or DeepSpeed stage 2\); see docs/scale-out.md"):
        callback.setup(SimpleNamespace(strategy=FSDPStrategy()), None, "fit")


def test_a_rank_zero_callback_is_left_alone_under_ddp(tmp_path):
    """Under DDP every rank holds the whole weights: setup refuses nothing and changes none of a callback's settings
    or state (HeldOutLoss only loads its set), and the callback still runs the model at its next due step."""
    path = HeldOutSet(torch.tensor([[2, 7, 8, 3]]), torch.tensor([[-100, 7, -100, -100]]), torch.ones(1, 4).long(),
                      "masked").save(tmp_path / "heldout.pt")
    # a rank-0 trainer under DDP at step 5 of 10: due for a probe / a sample every 5 steps, for the first of 2 scores
    trainer = SimpleNamespace(strategy=DDPStrategy(), global_step=5, max_steps=10, max_epochs=None, callbacks=[],
                              num_training_batches=float("inf"), is_global_zero=True)
    callbacks = {"probe": AttentionDiagnostics(every_n_steps=5), "log_samples": TextSamples(every_n_steps=5),
                 "score": HeldOutLoss(str(path), points=2)}
    for action, callback in callbacks.items():
        before = copy.deepcopy(vars(callback))
        callback.setup(trainer, None, "fit")
        after = dict(vars(callback))
        if isinstance(callback, HeldOutLoss):
            assert torch.equal(after.pop("heldout").labels, torch.tensor([[-100, 7, -100, -100]]))
            before.pop("heldout")
        assert after == before
        runs = []
        setattr(callback, action, lambda trainer, pl_module, runs=runs: runs.append(trainer.global_step))
        callback.on_train_batch_end(trainer, None, None, None, 9)
        assert runs == [5], type(callback).__name__
