"""Stochastic depth: residual branches dropped per sample in training, more often higher up the stack."""

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig, config_check


@config_check
def check_stochastic_depth(config: TransformerConfig) -> None:
    if not 0.0 <= config.stochastic_depth < 1.0:
        raise ValueError(f"model config: stochastic_depth must be in [0, 1), got {config.stochastic_depth}.")


def drop_rate(config: TransformerConfig, index: int) -> float:
    """The linear rule: block ``index`` (from 0) drops its branches with ``stochastic_depth * (index + 1) / layers``."""
    return config.stochastic_depth * (index + 1) / config.num_layers


class StochasticDepth(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, zero a residual branch for a whole sample with probability
    ``rate`` and scale the survivors by ``1 / (1 - rate)``; the identity in eval mode."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        """branch: [batch, ...], one keep-or-drop draw per sample."""
        if not self.training or self.rate == 0.0:
            return branch
        shape = (branch.shape[0],) + (1,) * (branch.dim() - 1)
        keep = torch.empty(shape, dtype=branch.dtype, device=branch.device).bernoulli_(1.0 - self.rate)
        return branch * keep.div_(1.0 - self.rate)

    def extra_repr(self) -> str:
        return f"rate={self.rate:g}"
