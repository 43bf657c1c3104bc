"""Callbacks that run the model on rank 0 alone stop at setup, with one clear message, under a strategy that shards
the weights (FSDP, DeepSpeed ZeRO stage 3), and are left alone under DDP."""

from types import SimpleNamespace

import pytest
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from lit_lm.callbacks import AttentionDiagnostics, HeldOutLoss, TextSamples
from lit_lm.callbacks.sharding import shards_weights


class DeepSpeedStrategy:  # stands for Lightning's (deepspeed is not installed): only the name and the stage matter
    def __init__(self, stage: int) -> None:
        self.zero_stage_3 = stage == 3


def test_which_strategies_shard_the_weights():
    assert shards_weights(FSDPStrategy())
    assert shards_weights(DeepSpeedStrategy(3))
    assert not shards_weights(DeepSpeedStrategy(2))
    assert not shards_weights(DDPStrategy())


@pytest.mark.parametrize("callback", [AttentionDiagnostics(), TextSamples(), HeldOutLoss("missing.pt")],
                         ids=lambda c: type(c).__name__)
def test_a_rank_zero_callback_refuses_sharded_weights_at_setup(callback):
    name = type(callback).__name__
    with pytest.raises(ValueError, match=rf"{name} runs the model on rank 0 alone.*FSDPStrategy.*"
                                         rf"--trainer.callbacks.{name}=null"):
        callback.setup(SimpleNamespace(strategy=FSDPStrategy()), None, "fit")


def test_a_rank_zero_callback_is_left_alone_under_ddp():
    for callback in (AttentionDiagnostics(), TextSamples()):
        callback.setup(SimpleNamespace(strategy=DDPStrategy()), None, "fit")
