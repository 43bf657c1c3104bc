"""Normalisation layers: one entry per ``TransformerConfig.norm`` value."""

import math
from collections.abc import Callable

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig


class ScaleNorm(nn.Module):
    """ScaleNorm (Nguyen & Salazar 2019): ``g * x / ||x||`` with one learned scalar ``g`` for the whole vector,
    initialised to sqrt(hidden_size) so that it starts with unit RMS, as the other norms do. Computed in float32."""

    no_weight_decay = True  # a norm's gain: excluded from AdamW's weight decay like LayerNorm's

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.hidden_size, self.eps = hidden_size, eps
        self.scale = nn.Parameter(torch.tensor(math.sqrt(hidden_size)))

    def init_weights(self, std: float) -> None:
        with torch.no_grad():
            self.scale.fill_(math.sqrt(self.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.float().square().sum(-1, keepdim=True).add(self.eps).rsqrt()
        return (x.float() * norm * self.scale.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"


NORMS: dict[str, Callable[[TransformerConfig], nn.Module]] = {
    "layernorm": lambda config: nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.bias),
    "rmsnorm": lambda config: nn.RMSNorm(config.hidden_size, eps=config.norm_eps),  # RMSNorm: Zhang & Sennrich 2019
    "scalenorm": lambda config: ScaleNorm(config.hidden_size, eps=config.norm_eps),  # Nguyen & Salazar 2019
}


def build_norm(config: TransformerConfig) -> nn.Module:
    """The norm a config asks for, over the hidden size."""
    try:
        make = NORMS[config.norm]
    except KeyError:
        raise ValueError(f"model config: unknown norm {config.norm!r}; choose one of {sorted(NORMS)}.") from None
    return make(config)
