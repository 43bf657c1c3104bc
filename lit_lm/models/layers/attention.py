"""Multi-head self-attention through torch's fused scaled_dot_product_attention."""

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig


class SelfAttention(nn.Module):
    """Self-attention with one fused Q/K/V projection (one matmul instead of three)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.out = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
        self.attention_dropout = config.attention_dropout
        self.out_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """x: [batch, seq, hidden]; attn_mask: bool, broadcastable to [batch, heads, seq, seq], True = attend."""
        batch, seq, hidden = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal,
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).reshape(batch, seq, hidden)
        return self.out_dropout(self.out(y))
