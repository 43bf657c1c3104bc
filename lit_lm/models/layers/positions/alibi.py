"""ALiBi: attention with linear biases (Press et al. 2022)."""

import math

import torch

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.positions.base import PositionScheme, register_position_scheme


def alibi_slopes(num_heads: int) -> list[float]:
    """The paper's geometric slopes: for n heads a power of two, 2^(-8/n), 2^(-16/n), ..., 2^(-8); otherwise those of
    the largest power of two below n, then every other slope of the next power of two, for the heads left over."""

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    base = 2 ** int(math.log2(num_heads))
    return geometric(base) + geometric(2 * base)[0::2][: num_heads - base]


@register_position_scheme("alibi")
class ALiBi(PositionScheme):
    """ALiBi (Press et al. 2022): each head's attention scores fall linearly with the distance between query and key,
    ``-slope * |i - j|``, at a fixed geometric slope per head. No parameters. An encoder looks both ways at the same
    penalty; a decoder sees only keys at or before the query, whose penalty is the paper's ``-slope * (i - j)``, so it
    is causal-safe and a KV cache only shifts the queries. Use it with position_embedding: none, as the paper does.
    ``forward(seq_len, start)`` returns the bias ``[1, heads, seq_len, start + seq_len]``."""

    def __init__(self, config: TransformerConfig, causal: bool = False) -> None:
        super().__init__(config, causal)
        self.num_heads = config.num_heads
        self.register_buffer("device_anchor", torch.empty(0), persistent=False)  # follows the model's device

    def forward(self, seq_len: int, start: int = 0) -> torch.Tensor:
        # computed on each call, not kept in a buffer: a meta-device load would leave a buffer's values uninitialised
        device = self.device_anchor.device
        slopes = torch.tensor(alibi_slopes(self.num_heads), dtype=torch.float32, device=device)
        queries = torch.arange(start, start + seq_len, device=device)
        keys = torch.arange(start + seq_len, device=device)
        distance = (queries[:, None] - keys[None, :]).abs().float()
        return (-slopes[:, None, None] * distance).unsqueeze(0)

    @staticmethod
    def score_bias(state: torch.Tensor, q: torch.Tensor, k: torch.Tensor, attention) -> torch.Tensor:
        return state.to(q.dtype)
