"""Optimizer parameter groups."""

from dataclasses import dataclass

import torch
from torch import nn

NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm, nn.RMSNorm)


def decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only; none on biases, norms or embeddings (tied ones too)."""
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, NO_DECAY_MODULES) or getattr(module, "no_weight_decay", False):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, other, seen = [], [], set()
    for name, param in model.named_parameters():  # named_parameters() yields a tied parameter once
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (other if id(param) in no_decay or name.endswith("bias") or param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


@dataclass
class OptimizerConfig:
    """AdamW (Loshchilov & Hutter 2019) settings; the learning-rate schedule is a callback that scales ``lr``."""

    lr: float = 1e-3
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.98)
    """Adam's beta1 and beta2."""
    eps: float = 1e-6
    """Adam's epsilon."""
    weight_decay: float = 0.01
    """Decoupled weight decay on weight matrices (not on biases, norms or embeddings)."""
    fused: bool | None = None
    """torch's fused AdamW kernel (one kernel for every parameter; ~5x faster steps than the default on this project's
    CPU). None uses it wherever torch has it for the parameters' device and the trainer allows it."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"model.optimizer.lr must be positive, got {self.lr}.")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"model.optimizer.betas must lie in [0, 1), got {self.betas}.")
        if self.weight_decay < 0 or self.eps <= 0:
            raise ValueError("model.optimizer.weight_decay must be >= 0 and model.optimizer.eps > 0.")

    def build(self, model: nn.Module, fused_allowed: bool = True) -> torch.optim.AdamW:
        """AdamW over ``model``'s decay groups; fused where available unless ``fused`` or ``fused_allowed`` say no."""
        groups = decay_param_groups(model, self.weight_decay)
        settings = dict(lr=self.lr, betas=tuple(self.betas), eps=self.eps)
        if self.fused is False or (self.fused is None and not fused_allowed):
            return torch.optim.AdamW(groups, **settings)
        try:
            return torch.optim.AdamW(groups, **settings, fused=True)
        except RuntimeError as error:  # torch has no fused kernel for these parameters' device or dtype
            if self.fused:
                raise ValueError(f"model.optimizer.fused is true, but {error} Set it to null or false.") from None
            return torch.optim.AdamW(groups, **settings)
