"""The position-wise feed-forward layer."""

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.activations import Activation


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
