"""Convolutions over the sequence: Primer's depthwise Q/K/V convolution and DeBERTa's nGiE."""

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.activations import activation_fn
from lit_lm.models.layers.norms import build_norm


class DepthwiseSequenceConv(nn.Module):
    """One small filter per channel, sliding along the sequence; causal (looking back only) for decoders.

    ``token_mask`` ([batch, seq, 1], 1 = real token) zeroes padding first, so a padded sequence gives the same
    outputs at its real positions as the unpadded one. With a ``cache`` (a causal conv in incremental decoding), the
    inputs of the previous ``kernel_size - 1`` positions come from ``cache.conv_history`` instead of zero padding.
    """

    def __init__(self, channels: int, kernel_size: int, causal: bool = False, bias: bool = True) -> None:
        super().__init__()
        if not causal and kernel_size % 2 == 0:
            raise ValueError(f"model config: qkv_conv_kernel_size must be odd in an encoder (centred on each token), "
                             f"got {kernel_size}.")
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=bias)
        self.causal = causal
        self.padding = (kernel_size - 1, 0) if causal else (kernel_size // 2, kernel_size // 2)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        if token_mask is not None:
            x = x * token_mask
        if cache is None:
            return self.conv(F.pad(x.transpose(1, 2), self.padding)).transpose(1, 2)
        if not self.causal:
            raise ValueError("a KV cache needs a causal convolution (a decoder)")
        history = cache.conv_history
        if history is None:
            history = x.new_zeros(x.shape[0], self.padding[0], x.shape[2])
        window = torch.cat([history, x], dim=1)
        cache.conv_history = window[:, window.shape[1] - self.padding[0]:]
        return self.conv(window.transpose(1, 2)).transpose(1, 2)


class NGramInducedEmbedding(nn.Module):
    """DeBERTa-v2's nGiE (He et al. 2021): a convolution over the embeddings, whose activated output is added
    to the first block's output and normalised, so the first layer also sees local n-gram structure."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        k = config.conv_kernel_size
        self.conv = nn.Conv1d(config.hidden_size, config.hidden_size, k, padding=k // 2, groups=config.conv_groups,
                              bias=config.bias)
        self.act = activation_fn(config.conv_act)
        self.norm = build_norm(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, embeddings: torch.Tensor, hidden: torch.Tensor, token_mask: torch.Tensor | None = None):
        """embeddings: the first block's input; hidden: its output; both [batch, seq, hidden]."""
        if token_mask is not None:
            embeddings = embeddings * token_mask
        out = self.conv(embeddings.transpose(1, 2)).transpose(1, 2)
        if token_mask is not None:
            out = out * token_mask
        return self.norm(hidden + self.act(self.dropout(out)))
