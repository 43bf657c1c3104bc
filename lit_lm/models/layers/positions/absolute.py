"""Absolute positions: one entry per ``TransformerConfig.position_embedding`` value, added to the token embeddings."""

from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.positions.learned import LearnedPositionEmbedding
from lit_lm.models.layers.positions.sinusoidal import ScaledSinusoidalPositionEmbedding, SinusoidalPositionEmbedding

ABSOLUTE_POSITIONS: dict[str, type[nn.Module] | None] = {
    "learned": LearnedPositionEmbedding,  # BERT, GPT-2
    "sinusoidal": SinusoidalPositionEmbedding,  # Vaswani et al. 2017
    "scaled_sinusoidal": ScaledSinusoidalPositionEmbedding,  # cramming, Geiping & Goldstein 2022
    "none": None,  # relative positions only (DeBERTa), or none at all
}


def build_position_embedding(config: TransformerConfig) -> nn.Module | None:
    """The absolute position embedding a config asks for (``forward(seq_len, start)`` -> [seq_len, hidden]), or
    None."""
    try:
        make = ABSOLUTE_POSITIONS[config.position_embedding]
    except KeyError:
        raise ValueError(f"model config: unknown position_embedding {config.position_embedding!r}; choose one of "
                         f"{sorted(ABSOLUTE_POSITIONS)}.") from None
    return None if make is None else make(config)
