"""Rotary position embedding (RoFormer, Su et al. 2021)."""

import torch

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.positions.base import PositionScheme, register_position_scheme


def apply_rotary(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate ``x`` ([..., seq, head_dim]) by the angles of ``RotaryEmbedding``."""
    cos, sin = (t.to(x.dtype) for t in rotary)
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


@register_position_scheme("rotary")
class RotaryEmbedding(PositionScheme):
    """Rotary position embedding (RoFormer, Su et al. 2021): each pair of query/key channels is rotated by an angle
    proportional to the position, so a query-key product depends on their distance only. No parameters.

    ``forward(seq_len, start)`` returns ``(cos, sin)``, each ``[seq_len, head_dim]``; ``rotate`` applies them.
    """

    any_layer_width = False  # its angles have the model's head size

    def __init__(self, config: TransformerConfig, causal: bool = False) -> None:
        super().__init__(config, causal)
        self.half, self.base = config.head_dim // 2, config.rotary_base
        self.register_buffer("device_anchor", torch.empty(0), persistent=False)  # follows the model's device

    @classmethod
    def check_config(cls, config: TransformerConfig) -> None:
        if config.head_dim % 2 or config.rotary_base <= 1:
            raise ValueError(f"model config: rotary positions need an even head size (hidden_size / num_heads = "
                             f"{config.head_dim}) and rotary_base > 1 (got {config.rotary_base}).")

    def forward(self, seq_len: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        # computed on each call (head_dim / 2 numbers), not kept in a buffer: a meta-device load
        # (transformers' from_pretrained) would leave a buffer's values uninitialised
        device = self.device_anchor.device
        frequencies = self.base ** (-torch.arange(self.half, dtype=torch.float32, device=device) / self.half)
        positions = torch.arange(start, start + seq_len, dtype=torch.float32, device=device)
        angles = torch.outer(positions, frequencies)
        angles = torch.cat([angles, angles], dim=-1)  # channel i and i + head_dim/2 form a pair
        return angles.cos(), angles.sin()

    @staticmethod
    def rotate(state, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return apply_rotary(q, state), apply_rotary(k, state)
