"""Normalisation layers: one entry per ``TransformerConfig.norm`` value."""

from collections.abc import Callable

from torch import nn

from lit_lm.models.config import TransformerConfig

NORMS: dict[str, Callable[[TransformerConfig], nn.Module]] = {
    "layernorm": lambda config: nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.bias),
    "rmsnorm": lambda config: nn.RMSNorm(config.hidden_size, eps=config.norm_eps),  # RMSNorm: Zhang & Sennrich 2019
}


def build_norm(config: TransformerConfig) -> nn.Module:
    """The norm a config asks for, over the hidden size."""
    try:
        make = NORMS[config.norm]
    except KeyError:
        raise ValueError(f"model config: unknown norm {config.norm!r}; choose one of {sorted(NORMS)}.") from None
    return make(config)
