"""Normalisation layers."""

from torch import nn

from lit_lm.models.config import TransformerConfig


def build_norm(config: TransformerConfig) -> nn.Module:
    """The norm a config asks for, over the hidden size."""
    if config.norm == "layernorm":
        return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.bias)
    if config.norm == "rmsnorm":  # RMSNorm: Zhang & Sennrich 2019
        return nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
    raise ValueError(f"model config: unknown norm {config.norm!r}; use 'layernorm' or 'rmsnorm'.")
