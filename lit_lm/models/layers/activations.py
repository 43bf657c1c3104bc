"""Activation functions: plain ones, and the gated (GLU) family that feed-forward layers widen their input for."""

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


def squared_relu(x: torch.Tensor) -> torch.Tensor:
    """relu(x)^2: Primer (So et al. 2021)."""
    return F.relu(x).square()


def identity(x: torch.Tensor) -> torch.Tensor:
    """x itself: the 'linear' activation."""
    return x


PLAIN_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # GELU: Hendrycks & Gimpel 2016 (exact erf form, as BERT)
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # the tanh approximation of GELU (GPT-2)
    "relu": F.relu,
    "squared_relu": squared_relu,
    "silu": F.silu,  # SiLU / swish: Ramachandran et al. 2017
    "tanh": torch.tanh,
    "elu": F.elu,  # ELU: Clevert et al. 2016
    "selu": F.selu,  # SELU: Klambauer et al. 2017
    "softplus": F.softplus,
    "sigmoid": torch.sigmoid,
    "linear": identity,  # no nonlinearity: the gate of the bilinear GLU
}
# GLU variants, Shazeer 2020: act(x W) * (x V); each maps to the activation of its gate. 'glu' is Dauphin et al.'s
# sigmoid gate, 'liglu' the bilinear one (no gate nonlinearity).
GATED_ACTIVATIONS = {"geglu": "gelu", "swiglu": "silu", "reglu": "relu", "glu": "sigmoid", "liglu": "linear"}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The element-wise function of a plain activation, or the gate function of a gated one."""
    try:
        return PLAIN_ACTIVATIONS[GATED_ACTIVATIONS.get(name, name)]
    except KeyError:
        known = sorted([*PLAIN_ACTIVATIONS, *GATED_ACTIVATIONS])
        raise ValueError(f"model config: unknown activation {name!r}; choose one of {known}.") from None


class Activation(nn.Module):
    """A plain activation, or a gated one that halves its input: act(gate) * value (GLU family, Shazeer 2020)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn = activation_fn(name)
        self.gated = name in GATED_ACTIVATIONS
        self.width_multiplier = 2 if self.gated else 1  # how much wider the input is than the output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, value = x.chunk(2, dim=-1)
            return self.fn(gate) * value
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name
