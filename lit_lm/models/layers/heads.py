"""Output heads."""

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.ffn import activation_fn
from lit_lm.models.layers.norms import build_norm


class MaskedLMHead(nn.Module):
    """BERT's MLM head: optional transform (dense, activation, norm), then a projection onto the vocabulary."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.transform = config.head_transform
        if self.transform:
            self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
            self.act = activation_fn(config.activation)
            self.norm = build_norm(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.transform:
            hidden = self.norm(self.act(self.dense(hidden)))
        return self.decoder(hidden)
