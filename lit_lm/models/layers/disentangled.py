"""DeBERTa's disentangled attention (He et al. 2021): content-to-position and position-to-content score terms."""

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig


def diagonal_skew(scores: torch.Tensor) -> torch.Tensor:
    """``[..., n, 2n-1]`` scores against distances ``n-1 .. -(n-1)`` -> ``[..., n, n]`` with
    ``out[i, j] = scores[i, (n-1) - (i-j)]``: row ``i`` read along the distance ``i - j`` of each key ``j``.

    Views and slices only (Transformer-XL's relative shift, Dai et al. 2019): no gather, and a cheap backward.
    """
    n = scores.shape[-2]
    flat = scores.flatten(-2)  # row i starts at i * (2n - 1); out[i, j] sits at (n - 1) + i * (2n - 2) + j
    return flat[..., n - 1 : n - 1 + n * (2 * n - 2)].unflatten(-1, (n, 2 * n - 2))[..., :n]


class DisentangledAttentionBias(nn.Module):
    """One layer's disentangled position terms, as an additive bias on its attention scores.

    With relative embeddings ``r`` per distance (``RelativePositionEmbedding``) and ``delta(i, j)`` the bucketed
    distance from query ``i`` to key ``j``:
    - c2p: ``q_i . K_r[delta(i, j)]``, the query's content against the key's relative position;
    - p2c: ``k_j . Q_r[delta(i, j)]``, the key's content against the query's relative position,
    with ``K_r``/``Q_r`` the embeddings projected by this layer's own key/query projections (``share_att_key``,
    DeBERTa-v3) or by separate ones. Scores against every distance are one matmul; ``diagonal_skew`` lays them out
    per (query, key) pair. The sum is scaled like the content scores, by 1/sqrt(d * (1 + number of terms)).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_heads
        self.content_to_position = "c2p" in config.relative_terms
        self.position_to_content = "p2c" in config.relative_terms
        self.share_att_key = config.share_att_key
        if not self.share_att_key:
            if self.content_to_position:
                self.pos_key = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
            if self.position_to_content:
                self.pos_query = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.dropout = nn.Dropout(config.dropout)
        self.scale = config.attention_scale

    def _project(self, relative: torch.Tensor, qkv: nn.Linear, part: int) -> torch.Tensor:
        """Relative embeddings through the query (part 0) or key (part 1) projection -> [heads, distances, d]."""
        if self.share_att_key:
            rows = slice(part * self.hidden_size, (part + 1) * self.hidden_size)
            bias = None if qkv.bias is None else qkv.bias[rows]
            projected = F.linear(relative, qkv.weight[rows], bias)
        else:
            projected = (self.pos_query if part == 0 else self.pos_key)(relative)
        return projected.unflatten(-1, (self.num_heads, -1)).transpose(0, 1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, relative: torch.Tensor, qkv: nn.Linear) -> torch.Tensor:
        """q, k: [batch, heads, n, d]; relative: [2n - 1, hidden] -> bias [batch, heads, n, n]."""
        relative = self.dropout(relative)
        bias = torch.zeros((), dtype=q.dtype, device=q.device)
        if self.content_to_position:
            position_keys = self._project(relative, qkv, part=1)
            bias = bias + diagonal_skew(q @ position_keys.transpose(-1, -2))
        if self.position_to_content:
            # distances reversed: row j of the skew then reads delta(i, j) = -(j - i) for each query i
            position_queries = self._project(relative.flip(0), qkv, part=0)
            bias = bias + diagonal_skew(k @ position_queries.transpose(-1, -2)).transpose(-1, -2)
        return bias * self.scale
