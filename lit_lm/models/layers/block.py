"""One transformer block: attention and feed-forward sublayers with residuals, pre- or post-norm."""

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.attention import SelfAttention
from lit_lm.models.layers.ffn import FeedForward
from lit_lm.models.layers.norms import build_norm


class TransformerBlock(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"  # pre-LN: Xiong et al. 2020
        self.attn_norm = build_norm(config)
        self.attn = SelfAttention(config)
        self.ffn_norm = build_norm(config)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.attn_norm(x), attn_mask, is_causal)
            return x + self.ffn(self.ffn_norm(x))
        x = self.attn_norm(x + self.attn(x, attn_mask, is_causal))
        return self.ffn_norm(x + self.ffn(x))
