"""Residual branches that start small: ReZero's learned gate and zero-initialised output projections."""

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig, config_check

RESIDUALS = ("standard", "rezero")
RESIDUAL_OUTPUTS = ("attn.out.weight", "ffn.down.weight", "ffn.down")  # the last linear layer of each branch


@config_check
def check_residual(config: TransformerConfig) -> None:
    if config.residual not in RESIDUALS:
        raise ValueError(f"model config: residual must be one of {list(RESIDUALS)}, got {config.residual!r}.")


class ReZero(nn.Module):
    """ReZero (Bachlechner et al. 2020): a block computes ``x + alpha * F(x)`` for each of its branches, with one
    learned scalar ``alpha`` per block that starts at 0, so every block starts as the identity; the block has no norms.
    """

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        return self.alpha * branch

    def init_weights(self, std: float) -> None:
        nn.init.zeros_(self.alpha)


def zero_residual_outputs(model: nn.Module) -> None:
    """Zero the output projections of every attention and feed-forward branch (their biases start at zero already):
    with pre-LN or ReZero, every block then starts as the identity. Zero-initialised branch outputs: Fixup, Zhang et
    al. 2019."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(RESIDUAL_OUTPUTS):
                param.zero_()
