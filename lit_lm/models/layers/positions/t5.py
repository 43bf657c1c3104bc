"""T5's bucketed relative attention bias (Raffel et al. 2020)."""

import math

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.positions.base import PositionScheme, register_position_scheme


def t5_bucket(relative: torch.Tensor, buckets: int, max_distance: int, bidirectional: bool) -> torch.Tensor:
    """T5's buckets (Raffel et al. 2020) of ``relative`` = key position minus query position.

    Bidirectional: half the buckets for keys after the query, half for keys before. Causal: all for keys before
    (later keys are masked anyway). Within a side, the first half of the buckets are exact distances and the rest
    widen logarithmically up to ``max_distance``; farther keys share the last bucket.
    """
    if bidirectional:
        buckets //= 2
        side = (relative > 0).long() * buckets
        distance = relative.abs()
    else:
        side = torch.zeros_like(relative)
        distance = (-relative).clamp(min=0)
    exact = max(1, buckets // 2)
    scale = (buckets - exact) / math.log(max_distance / exact)
    far = exact + (torch.log(distance.clamp(min=exact).float() / exact) * scale).long()
    return side + torch.where(distance < exact, distance, far.clamp(max=buckets - 1))


@register_position_scheme("t5")
class T5RelativeBias(PositionScheme):
    """T5's relative attention bias (Raffel et al. 2020): one learned scalar per head and distance bucket, added to
    the attention scores of every layer. ``forward(seq_len, start)`` returns
    ``[1, heads, seq_len, start + seq_len]``."""

    def __init__(self, config: TransformerConfig, causal: bool = False) -> None:
        super().__init__(config, causal)
        self.buckets, self.max_distance = config.position_buckets, config.relative_max_distance
        self.bidirectional = not causal
        self.table = nn.Embedding(config.position_buckets, config.num_heads)

    @classmethod
    def check_config(cls, config: TransformerConfig) -> None:
        if config.position_buckets < 2:
            raise ValueError(f"model config: relative_positions t5 needs position_buckets >= 2 (T5: 32), "
                             f"got {config.position_buckets}.")
        if config.relative_max_distance <= config.position_buckets // 2:
            raise ValueError(f"model config: with relative_positions t5, max_relative_positions (or "
                             f"max_position_embeddings) must exceed position_buckets / 2, got "
                             f"{config.relative_max_distance}.")

    def forward(self, seq_len: int, start: int = 0) -> torch.Tensor:
        device = self.table.weight.device
        queries = torch.arange(start, start + seq_len, device=device)
        keys = torch.arange(start + seq_len, device=device)
        bucket = t5_bucket(keys[None, :] - queries[:, None], self.buckets, self.max_distance, self.bidirectional)
        return self.table(bucket).permute(2, 0, 1).unsqueeze(0)

    @staticmethod
    def score_bias(state: torch.Tensor, q: torch.Tensor, k: torch.Tensor, attention: nn.Module) -> torch.Tensor:
        return state.to(q.dtype)
