"""DeBERTa's disentangled attention (He et al. 2021): a shared table of relative-position embeddings (with log
buckets), projected by each layer into content-to-position and position-to-content score terms."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.norms import build_norm
from lit_lm.models.layers.positions.base import PositionScheme, register_position_scheme


def log_bucket_position(distance: torch.Tensor, buckets: int, max_distance: int) -> torch.Tensor:
    """DeBERTa's log buckets (He et al. 2021): distances up to buckets/2 stay exact, longer ones share buckets that
    widen logarithmically, reaching bucket ``buckets - 1`` at ``max_distance``. Odd in ``distance``."""
    half = buckets // 2
    magnitude = distance.abs()
    # bucket = half + ceil(log(|d| / half) / log((max_distance - 1) / half) * (half - 1)), with the sign of d
    log_ratio = torch.log(magnitude.clamp(min=half) / half) / torch.log(torch.tensor((max_distance - 1) / half))
    far = torch.ceil(log_ratio * (half - 1)) + half
    return torch.where(magnitude <= half, distance, (far * torch.sign(distance)).to(distance.dtype))


def relative_distance_index(seq_len: int, config: TransformerConfig, device=None) -> torch.Tensor:
    """Row of the relative-embedding table for each distance ``seq_len - 1, ..., 0, ..., -(seq_len - 1)``
    (query position minus key position), bucketed and clipped to the table's ``2 * relative_span`` rows."""
    distance = torch.arange(seq_len - 1, -seq_len, -1, device=device)
    if config.position_buckets:
        distance = log_bucket_position(distance, config.position_buckets, config.relative_max_distance)
    span = config.relative_span
    return (distance + span).clamp(0, 2 * span - 1)


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


@register_position_scheme("disentangled")
class RelativePositionEmbedding(PositionScheme):
    """DeBERTa's table of relative-position embeddings, shared by every layer (He et al. 2021).

    ``forward(seq_len)`` returns one (optionally normalised) embedding per relative distance, from ``seq_len - 1``
    down to ``-(seq_len - 1)``: ``[2 * seq_len - 1, hidden]``. Each attention layer projects it into its own
    position keys/queries (``DisentangledAttentionBias``). Encoders only: it looks both ways and keeps no cache.
    """

    causal_safe = False
    any_layer_width = False  # its table and projections have the model's hidden size

    def __init__(self, config: TransformerConfig, causal: bool = False) -> None:
        super().__init__(config, causal)
        self.config = config
        self.table = nn.Embedding(2 * config.relative_span, config.hidden_size)
        self.norm = build_norm(config) if config.relative_embedding_norm else nn.Identity()

    @classmethod
    def check_config(cls, config: TransformerConfig) -> None:
        if not config.relative_terms or not set(config.relative_terms) <= {"c2p", "p2c"}:
            raise ValueError(
                f"model config: relative_terms must name 'c2p' and/or 'p2c' for disentangled attention, got "
                f"{list(config.relative_terms)}; set relative_positions: none to turn relative positions off."
            )
        if config.position_buckets == 1:
            raise ValueError("model config: position_buckets must be 0 (no buckets) or at least 2.")
        if config.position_buckets and config.relative_max_distance <= config.position_buckets // 2 + 1:
            raise ValueError(
                f"model config: with position_buckets {config.position_buckets}, max_relative_positions (or "
                f"max_position_embeddings) must exceed {config.position_buckets // 2 + 1}, got "
                f"{config.relative_max_distance}."
            )

    @classmethod
    def attention_scale(cls, config: TransformerConfig) -> float:
        """DeBERTa's 1/sqrt(d * (1 + number of relative terms)): each term adds a score of the same scale."""
        return 1.0 / math.sqrt(config.head_dim * (1 + len(config.relative_terms)))

    @classmethod
    def layer_module(cls, config: TransformerConfig) -> nn.Module:
        return DisentangledAttentionBias(config)

    def forward(self, seq_len: int, start: int = 0) -> torch.Tensor:
        if start:
            raise ValueError("disentangled attention has no KV cache: it is for encoders")
        index = relative_distance_index(seq_len, self.config, self.table.weight.device)
        return self.norm(self.table(index))  # normalising rows after selecting them = selecting normalised rows

    @staticmethod
    def score_bias(state: torch.Tensor, q: torch.Tensor, k: torch.Tensor, attention: nn.Module) -> torch.Tensor:
        return attention.relative(q, k, state, attention.qkv)


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
        self.scale = RelativePositionEmbedding.attention_scale(config)

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
