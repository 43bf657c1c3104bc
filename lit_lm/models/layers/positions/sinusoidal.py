"""Fixed sinusoidal absolute positions (Vaswani et al. 2017), and cramming's variant with one learned scale."""

import math

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig, config_check

SINUSOIDAL_BASE = 10000.0  # the longest wavelength is 2 pi times this (Vaswani et al. 2017)


@config_check
def check_sinusoidal_positions(config: TransformerConfig) -> None:
    """Sinusoids pair the channels (sin, cos) and count positions from 0: an even width and no table offset."""
    if config.position_embedding not in ("sinusoidal", "scaled_sinusoidal"):
        return
    if config.hidden_size % 2 or config.position_offset:
        raise ValueError(f"model config: position_embedding {config.position_embedding} needs an even hidden_size "
                         f"(got {config.hidden_size}) and position_offset 0 (got {config.position_offset}; the "
                         f"offset is for the learned table).")


def sinusoids(start: int, seq_len: int, width: int, device=None) -> torch.Tensor:
    """[seq_len, width] float32: channel 2i is sin(p / base^(2i/width)), channel 2i + 1 the cosine of the same angle,
    for the positions p = start .. start + seq_len - 1 (Vaswani et al. 2017)."""
    frequencies = SINUSOIDAL_BASE ** (-torch.arange(0, width, 2, dtype=torch.float32, device=device) / width)
    positions = torch.arange(start, start + seq_len, dtype=torch.float32, device=device)
    angles = torch.outer(positions, frequencies)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class SinusoidalPositionEmbedding(nn.Module):
    """Fixed sinusoids added to the token embeddings (Vaswani et al. 2017): no parameters, any length, and a decoder's
    KV cache only shifts them (``start``). Computed on each call, not kept in a buffer: a meta-device load
    (transformers' from_pretrained) would leave a buffer's values uninitialised."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.width = config.hidden_size
        self.register_buffer("device_anchor", torch.empty(0), persistent=False)  # follows the model's device and dtype

    def forward(self, seq_len: int, start: int = 0) -> torch.Tensor:
        """The vectors of positions ``start .. start + seq_len - 1``."""
        anchor = self.device_anchor
        return sinusoids(start, seq_len, self.width, anchor.device).to(anchor.dtype)


class ScaledSinusoidalPositionEmbedding(SinusoidalPositionEmbedding):
    """The same sinusoids times one learned scalar (cramming, Geiping & Goldstein 2022), which starts at
    1/sqrt(hidden_size): the positions start small beside the token embeddings, and training sets their weight."""

    no_weight_decay = True  # a gain, like a norm's: excluded from AdamW's weight decay

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.scale = nn.Parameter(torch.tensor(1.0 / math.sqrt(self.width)))

    def init_weights(self, std: float) -> None:
        with torch.no_grad():
            self.scale.fill_(1.0 / math.sqrt(self.width))

    def forward(self, seq_len: int, start: int = 0) -> torch.Tensor:
        return super().forward(seq_len, start) * self.scale
