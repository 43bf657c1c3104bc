"""The interface every relative-position scheme implements, and the registry that maps a config value to one.

A scheme is one class, registered under the value of ``TransformerConfig.relative_positions`` that selects it::

    @register_position_scheme("my-scheme")
    class MyScheme(PositionScheme):
        ...

Each model builds one instance (its ``relative_positions`` attribute) and runs it once per forward,
``forward(seq_len, start=0)``, for the queries at positions ``start .. start + seq_len - 1`` (``start`` > 0 when
earlier keys sit in a KV cache). What it returns, the *state*, reaches every attention layer, which asks the scheme's
class what to do with it: ``rotate`` queries and keys, and add a ``score_bias`` to the attention scores. A scheme
may give each attention layer its own module (``layer_module``, kept as ``attn.relative``), says whether a decoder
may use it (``causal_safe``), checks its settings (``check_config``) and sets the attention scale
(``attention_scale``). Nothing else in lit_lm/models knows a scheme by name.
"""

import math
from typing import Any, ClassVar

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig, config_check

POSITION_SCHEMES: dict[str, type["PositionScheme"]] = {}


def register_position_scheme(name: str):
    """Class decorator: make a ``PositionScheme`` subclass the one ``relative_positions: <name>`` selects."""

    def register(scheme: type["PositionScheme"]) -> type["PositionScheme"]:
        if name in POSITION_SCHEMES and POSITION_SCHEMES[name].__qualname__ != scheme.__qualname__:
            raise ValueError(f"relative_positions {name!r} is already registered by {POSITION_SCHEMES[name]!r}")
        scheme.name = name
        POSITION_SCHEMES[name] = scheme
        return scheme

    return register


def position_scheme(name: str) -> type["PositionScheme"]:
    """The scheme class registered under ``name``; a clear error listing the registered ones otherwise."""
    try:
        return POSITION_SCHEMES[name]
    except KeyError:
        raise ValueError(f"model config: unknown relative_positions {name!r}; choose one of "
                         f"{sorted(POSITION_SCHEMES)}.") from None


@config_check
def check_relative_positions(config: TransformerConfig) -> None:
    """Run by every ``TransformerConfig``: the chosen scheme exists and accepts the config's settings."""
    position_scheme(config.relative_positions).check_config(config)


class PositionScheme(nn.Module):
    """A relative-position scheme; the defaults describe one that changes nothing."""

    name: ClassVar[str] = ""
    """The ``relative_positions`` value that selects it (set by ``register_position_scheme``)."""
    causal_safe: ClassVar[bool] = True
    """Whether a decoder may use it: it never lets a position see later ones, and works with a KV cache."""
    needs_state: ClassVar[bool] = True
    """Whether attention needs its per-forward state (False only for a scheme that does nothing)."""
    any_layer_width: ClassVar[bool] = True
    """Whether it serves blocks of any width (``layer_widths``): False when its state or layer modules have the
    model's hidden or head size."""

    def __init__(self, config: TransformerConfig, causal: bool = False) -> None:
        super().__init__()

    @classmethod
    def check_config(cls, config: TransformerConfig) -> None:
        """Raise ``ValueError`` (naming the setting and the fix) for settings this scheme cannot use."""

    @classmethod
    def attention_scale(cls, config: TransformerConfig) -> float:
        """The factor on the query-key products: 1/sqrt(head_dim) (Vaswani et al. 2017)."""
        return 1.0 / math.sqrt(config.head_dim)

    @classmethod
    def layer_module(cls, config: TransformerConfig) -> nn.Module | None:
        """Each attention layer's own module (with its own parameters), kept as ``attn.relative``; None: no module."""
        return None

    def forward(self, seq_len: int, start: int = 0) -> Any:
        """The state every attention layer receives for the queries at ``start .. start + seq_len - 1``."""
        return None

    @staticmethod
    def rotate(state: Any, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys ([batch, heads, seq, head_dim], before the cache) as attention should use them."""
        return q, k

    @staticmethod
    def score_bias(state: Any, q: torch.Tensor, k: torch.Tensor, attention: nn.Module) -> torch.Tensor | None:
        """An additive bias on the attention scores, broadcastable to [batch, heads, queries, keys], or None.
        ``k`` includes the cached keys; ``attention`` is the ``SelfAttention`` layer (for ``attention.relative``)."""
        return None
