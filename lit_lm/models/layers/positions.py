"""How positions enter a model.

Two ways, each behind a small module:
- absolute: a vector per position added to the token embeddings (``LearnedPositionEmbedding``);
- relative: a module the model runs once per forward (``RelativePositionEmbedding`` for DeBERTa) whose output
  every attention layer receives as ``relative`` and turns into its own score terms. Rotary embeddings or T5
  buckets fit the same slot: computed once per forward, consumed by each layer's attention.
"""

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.norms import build_norm


class LearnedPositionEmbedding(nn.Module):
    """A learned vector per absolute position, added to the token embeddings (BERT, GPT-2).

    Positions count from ``config.position_offset``: RoBERTa's table starts past its padding index.
    """

    no_weight_decay = True  # an embedding table: excluded from AdamW's weight decay like nn.Embedding

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.offset = config.position_offset
        self.weight = nn.Parameter(torch.empty(config.max_position_embeddings, config.hidden_size))

    def forward(self, seq_len: int) -> torch.Tensor:
        if self.offset + seq_len > len(self.weight):
            raise ValueError(
                f"sequence of {seq_len} tokens is longer than the model takes ({len(self.weight) - self.offset}: "
                f"model.max_position_embeddings minus position_offset); shorten data.seq_length or raise "
                f"max_position_embeddings."
            )
        return self.weight[self.offset : self.offset + seq_len]

    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.weight, std=std)


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


class RelativePositionEmbedding(nn.Module):
    """DeBERTa's table of relative-position embeddings, shared by every layer (He et al. 2021).

    ``forward(seq_len)`` returns one (optionally normalised) embedding per relative distance, from ``seq_len - 1``
    down to ``-(seq_len - 1)``: ``[2 * seq_len - 1, hidden]``. Each attention layer projects it into its own
    position keys/queries (``DisentangledAttentionBias``).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.table = nn.Embedding(2 * config.relative_span, config.hidden_size)
        self.norm = build_norm(config) if config.relative_embedding_norm else nn.Identity()

    def forward(self, seq_len: int) -> torch.Tensor:
        index = relative_distance_index(seq_len, self.config, self.table.weight.device)
        return self.norm(self.table(index))  # normalising rows after selecting them = selecting normalised rows
