"""Position-wise feed-forward layers and their activations."""

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig

ACTIVATIONS = {
    "gelu": F.gelu,  # GELU: Hendrycks & Gimpel 2016 (exact erf form, as BERT)
    "relu": F.relu,
}


def activation_fn(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"model config: unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.") from None


class FeedForward(nn.Module):
    """Linear up to intermediate_size, activation, linear back down."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.bias)
        self.act = activation_fn(config.activation)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.act(self.up(x))))
