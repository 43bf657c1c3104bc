"""How positions enter a model.

Two ways, each behind a small module:
- absolute: a vector per position added to the token embeddings (``LearnedPositionEmbedding``);
- relative: a module the model runs once per forward, ``forward(seq_len, start=0)`` for the queries at positions
  ``start .. start + seq_len - 1`` (``start`` > 0 when earlier keys sit in a KV cache), whose output every attention
  layer receives as ``relative``: DeBERTa's embedding table (``RelativePositionEmbedding``), rotary angles
  (``RotaryEmbedding``) or T5's bucketed bias (``T5RelativeBias``). ``build_relative_positions`` picks one.
"""

import math

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

    def forward(self, seq_len: int, start: int = 0) -> torch.Tensor:
        """The vectors of positions ``start .. start + seq_len - 1``."""
        first = self.offset + start
        if first + seq_len > len(self.weight):
            raise ValueError(
                f"sequence of {start + seq_len} tokens is longer than the model takes "
                f"({len(self.weight) - self.offset}: "
                f"model.max_position_embeddings minus position_offset); shorten data.seq_length (or the prompt and "
                f"max_new_tokens) or raise max_position_embeddings."
            )
        return self.weight[first : first + seq_len]

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

    def forward(self, seq_len: int, start: int = 0) -> torch.Tensor:
        if start:
            raise ValueError("disentangled attention has no KV cache: it is for encoders")
        index = relative_distance_index(seq_len, self.config, self.table.weight.device)
        return self.norm(self.table(index))  # normalising rows after selecting them = selecting normalised rows


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer, Su et al. 2021): each pair of query/key channels is rotated by an angle
    proportional to the position, so a query-key product depends on their distance only. No parameters.

    ``forward(seq_len, start)`` returns ``(cos, sin)``, each ``[seq_len, head_dim]``; ``apply_rotary`` uses them.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.half, self.base = config.head_dim // 2, config.rotary_base
        self.register_buffer("device_anchor", torch.empty(0), persistent=False)  # follows the model's device

    def forward(self, seq_len: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        # computed on each call (head_dim / 2 numbers), not kept in a buffer: a meta-device load
        # (transformers' from_pretrained) would leave a buffer's values uninitialised
        device = self.device_anchor.device
        frequencies = self.base ** (-torch.arange(self.half, dtype=torch.float32, device=device) / self.half)
        positions = torch.arange(start, start + seq_len, dtype=torch.float32, device=device)
        angles = torch.outer(positions, frequencies)
        angles = torch.cat([angles, angles], dim=-1)  # channel i and i + head_dim/2 form a pair
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate ``x`` ([..., seq, head_dim]) by the angles of ``RotaryEmbedding``."""
    cos, sin = (t.to(x.dtype) for t in rotary)
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


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


class T5RelativeBias(nn.Module):
    """T5's relative attention bias (Raffel et al. 2020): one learned scalar per head and distance bucket, added to
    the attention scores of every layer. ``forward(seq_len, start)`` returns
    ``[1, heads, seq_len, start + seq_len]``."""

    def __init__(self, config: TransformerConfig, causal: bool) -> None:
        super().__init__()
        self.buckets, self.max_distance = config.position_buckets, config.relative_max_distance
        self.bidirectional = not causal
        self.table = nn.Embedding(config.position_buckets, config.num_heads)

    def forward(self, seq_len: int, start: int = 0) -> torch.Tensor:
        device = self.table.weight.device
        queries = torch.arange(start, start + seq_len, device=device)
        keys = torch.arange(start + seq_len, device=device)
        bucket = t5_bucket(keys[None, :] - queries[:, None], self.buckets, self.max_distance, self.bidirectional)
        return self.table(bucket).permute(2, 0, 1).unsqueeze(0)


def build_relative_positions(config: TransformerConfig, causal: bool) -> nn.Module | None:
    """The relative-position module a config asks for, or None."""
    if config.relative_positions == "disentangled":  # DeBERTa: He et al. 2021
        return RelativePositionEmbedding(config)
    if config.relative_positions == "rotary":
        return RotaryEmbedding(config)
    if config.relative_positions == "t5":
        return T5RelativeBias(config, causal)
    return None
