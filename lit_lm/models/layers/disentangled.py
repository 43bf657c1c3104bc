"""DeBERTa's disentangled attention (He et al. 2021): content-to-position and position-to-content score terms."""

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig


def relative_scores(content: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Scores of ``content`` [heads, batch, n, d] against ``positions`` [heads, 2n-1, d] (distances ``n-1 .. -(n-1)``),
    per (query, key) pair: [heads, batch, n, n], ``out[h, b, i, j] = content[h, b, i] . positions[h, (n-1) - (i-j)]``.

    One matmul per head for the whole batch, read through one strided view of its fresh output (Transformer-XL's
    relative shift, Dai et al. 2019): no gather, and a backward of one zero-filled buffer and one copy.
    """
    heads, batch, n, d = content.shape
    # contiguous operands: bmm would copy strided ones in the forward and again in the backward
    scores = torch.bmm(content.reshape(heads, batch * n, d).contiguous(), positions.contiguous().transpose(1, 2))
    # in each sequence's block of the fresh output, row i starts at i * (2n - 1): out[i, j] at (n-1) + i * (2n-2) + j
    return scores.as_strided((heads, batch, n, n), (batch * n * (2 * n - 1), n * (2 * n - 1), 2 * n - 2, 1), n - 1)


class DisentangledAttentionBias(nn.Module):
    """One layer's disentangled position terms, as an additive bias on its attention scores.

    With relative embeddings ``r`` per distance (``RelativePositionEmbedding``) and ``delta(i, j)`` the bucketed
    distance from query ``i`` to key ``j``:
    - c2p: ``q_i . K_r[delta(i, j)]``, the query's content against the key's relative position;
    - p2c: ``k_j . Q_r[delta(i, j)]``, the key's content against the query's relative position,
    with ``K_r``/``Q_r`` the embeddings projected by this layer's own key/query projections (``share_att_key``,
    DeBERTa-v3) or by separate ones. A term's scores against every distance are one matmul (``relative_scores``),
    read per (query, key) pair. The sum is scaled like the content scores, by 1/sqrt(d * (1 + number of terms)).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
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

    def _positions(self, relative: torch.Tensor, qkv: nn.Linear) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Relative embeddings through the query and key projections, scaled -> ``(Q_r, K_r)``, [distances, hidden]."""
        if self.share_att_key:
            # through the whole fused projection (V too, unused): autocast reuses its cast weight, and no weight slice
            # has to be scattered back in the backward
            queries, keys, _ = (F.linear(relative, qkv.weight, qkv.bias) * self.scale).chunk(3, dim=-1)
            return queries, keys
        queries = self.pos_query(relative) * self.scale if self.position_to_content else None
        keys = self.pos_key(relative) * self.scale if self.content_to_position else None
        return queries, keys

    def forward(self, q: torch.Tensor, k: torch.Tensor, relative: torch.Tensor, qkv: nn.Linear) -> torch.Tensor:
        """q, k: [batch, heads, n, d]; relative: [2n - 1, hidden] -> bias [batch, heads, n, n]."""
        queries, keys = self._positions(self.dropout(relative), qkv)
        bias = None
        if self.content_to_position:
            bias = relative_scores(q.transpose(0, 1), self._per_head(keys))
        if self.position_to_content:
            # distances reversed: row j then reads delta(i, j) = -(j - i) for each query i
            p2c = relative_scores(k.transpose(0, 1), self._per_head(queries.flip(0))).transpose(-1, -2)
            bias = p2c if bias is None else bias + p2c
        return bias.transpose(0, 1)

    def _per_head(self, positions: torch.Tensor) -> torch.Tensor:
        """[distances, hidden] -> [heads, distances, d]."""
        return positions.unflatten(-1, (self.num_heads, -1)).transpose(0, 1)
