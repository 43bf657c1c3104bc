"""Which strategies shard a model's weights across devices, for callbacks that run the model on rank 0 alone."""

import lightning as L


def shards_weights(strategy: object) -> bool:
    """Whether ``strategy`` keeps only a shard of each weight on a device: FSDP, and DeepSpeed ZeRO stage 3."""
    name = type(strategy).__name__
    return "FSDP" in name or ("DeepSpeed" in name and bool(getattr(strategy, "zero_stage_3", False)))


def refuse_sharded_weights(trainer: L.Trainer, owner: str) -> None:
    """Stop at setup, with one clear message, a callback that runs the model on rank 0 alone under a strategy that
    shards the weights: rank 0 holds a shard only, and running the rest would wait for ranks that never come."""
    if shards_weights(trainer.strategy):
        raise ValueError(
            f"{owner} runs the model on rank 0 alone, which cannot work under {type(trainer.strategy).__name__}: it "
            f"shards the weights across devices. Remove it (--trainer.callbacks.{owner}=null), or train with "
            "configs/trainer/ddp.yaml (or DeepSpeed stage 2); see docs/scale-out.md.")
