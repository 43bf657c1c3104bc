"""The key/value cache of incremental decoding: what each layer keeps from the tokens it has already seen."""

from dataclasses import dataclass, field

import torch


@dataclass
class LayerCache:
    """One attention layer's keys and values so far (``[batch, heads, seen, head_dim]``, positions already applied),
    and, with Primer's convolution, the last ``kernel_size - 1`` Q/K/V projections it convolves the next token with."""

    key: torch.Tensor | None = None
    value: torch.Tensor | None = None
    conv_history: torch.Tensor | None = None

    def append(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new positions' keys and values; return all of them."""
        if self.key is not None:
            key, value = torch.cat([self.key, key], dim=2), torch.cat([self.value, value], dim=2)
        self.key, self.value = key, value
        return key, value


@dataclass
class KVCache:
    """Every layer's ``LayerCache``. Pass the same object to each forward of a generation; ``length`` is the number
    of positions already seen, so the next token's position."""

    layers: list[LayerCache] = field(default_factory=list)

    @classmethod
    def empty(cls, num_layers: int) -> "KVCache":
        return cls([LayerCache() for _ in range(num_layers)])

    @property
    def length(self) -> int:
        key = self.layers[0].key if self.layers else None
        return 0 if key is None else key.shape[2]
