"""The position-wise feed-forward layer."""

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig, config_check
from lit_lm.models.layers.activations import Activation


@config_check
def check_ffn_every(config: TransformerConfig) -> None:
    if not 0 <= config.ffn_every <= config.num_layers:
        raise ValueError(f"model config: ffn_every must be in [0, num_layers={config.num_layers}] (0: no feed-forward "
                         f"layer at all), got {config.ffn_every}.")


def has_ffn(config: TransformerConfig, index: int) -> bool:
    """Whether block ``index`` (from 0) has a feed-forward layer: with ``ffn_every: k``, blocks k-1, 2k-1, ..."""
    return config.ffn_every > 0 and (index + 1) % config.ffn_every == 0


class FeedForward(nn.Module):
    """Linear up to intermediate_size, activation, linear back down; gated activations project up twice as wide."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.act = Activation(config.activation)
        self.up = nn.Linear(config.hidden_size, config.intermediate_size * self.act.width_multiplier, bias=config.bias)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.act(self.up(x))))
