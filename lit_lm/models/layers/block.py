"""One transformer block: attention and feed-forward sublayers with residuals, pre- or post-norm."""

from typing import NamedTuple

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.attention import SelfAttention
from lit_lm.models.layers.ffn import FeedForward
from lit_lm.models.layers.inputs import AttentionInputs
from lit_lm.models.layers.moe import MixtureOfExperts
from lit_lm.models.layers.norms import build_norm


class BlockOutput(NamedTuple):
    hidden: torch.Tensor
    attention: torch.Tensor | None = None  # [batch, heads, seq, seq] when asked for
    aux_loss: torch.Tensor | None = None  # the mixture of experts' load-balancing loss, when there is one


class TransformerBlock(nn.Module):
    def __init__(self, config: TransformerConfig, causal: bool = False) -> None:
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"  # pre-LN: Xiong et al. 2020
        self.attn_norm = build_norm(config)
        self.attn = SelfAttention(config, causal=causal)
        self.ffn_norm = build_norm(config)
        self.ffn = MixtureOfExperts(config) if config.moe_experts else FeedForward(config)

    def _ffn(self, x: torch.Tensor, token_mask: torch.Tensor | None):
        if isinstance(self.ffn, MixtureOfExperts):
            return self.ffn(x, token_mask)
        return self.ffn(x), None

    def forward(self, x: torch.Tensor, inputs: AttentionInputs = AttentionInputs()) -> BlockOutput:
        """x: [batch, seq, hidden]; ``inputs`` as ``SelfAttention.forward``."""
        if self.pre_norm:
            h, weights = self.attn(self.attn_norm(x), inputs)
            x = x + h
            h, aux_loss = self._ffn(self.ffn_norm(x), inputs.token_mask)
            return BlockOutput(x + h, weights, aux_loss)
        h, weights = self.attn(x, inputs)
        x = self.attn_norm(x + h)
        h, aux_loss = self._ffn(x, inputs.token_mask)
        return BlockOutput(self.ffn_norm(x + h), weights, aux_loss)
