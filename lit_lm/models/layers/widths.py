"""Per-layer widths (``layer_widths``): each block its own hidden size, linear projections where the width changes.
Narrow early layers ("FirstNarrow") are the essay's finding for small models; the blocks are otherwise unchanged."""

import dataclasses

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig, config_check
from lit_lm.models.layers.positions import position_scheme
from lit_lm.models.layers.sharing import layer_group


def layer_config(config: TransformerConfig, index: int) -> TransformerConfig:
    """The config block ``index`` is built from: ``config`` itself without ``layer_widths``, otherwise a copy at the
    block's width, with the feed-forward width scaled alike (``intermediate_size * width // hidden_size``)."""
    if config.layer_widths is None:
        return config
    width = config.layer_widths[index]
    return dataclasses.replace(config, hidden_size=width, layer_widths=None,
                               intermediate_size=config.intermediate_size * width // config.hidden_size)


@config_check
def check_layer_widths(config: TransformerConfig) -> None:
    widths = config.layer_widths
    if widths is None:
        return
    if len(widths) != config.num_layers:
        raise ValueError(f"model config: layer_widths needs one width per block (num_layers={config.num_layers}), "
                         f"got {len(widths)}: {list(widths)}.")
    for i, width in enumerate(widths):
        if width < 1 or width % config.num_heads:
            raise ValueError(f"model config: layer_widths[{i}] = {width} must be a positive multiple of num_heads "
                             f"({config.num_heads}), so that every head has the same size.")
        if config.intermediate_size * width // config.hidden_size < 1:
            raise ValueError(f"model config: layer_widths[{i}] = {width} leaves no feed-forward unit "
                             f"(intermediate_size * width // hidden_size = 0); raise intermediate_size or the width.")
        try:
            layer_config(config, i)
        except ValueError as error:
            raise ValueError(f"model config: layer_widths[{i}] = {width}: {error}") from None
    scheme = position_scheme(config.relative_positions)
    if not scheme.any_layer_width and any(width != config.hidden_size for width in widths):
        raise ValueError(f"model config: relative_positions {scheme.name} has the model's hidden or head size, so "
                         f"layer_widths must all equal hidden_size ({config.hidden_size}); use a scheme whose bias "
                         f"does not depend on the width (e.g. t5 or alibi) or drop layer_widths.")
    if config.share_layers != "none":
        groups: dict[int, set[int]] = {}
        for i, width in enumerate(widths):
            groups.setdefault(layer_group(config, i), set()).add(width)
        if any(len(group) > 1 for group in groups.values()):
            raise ValueError(f"model config: share_layers {config.share_layers} shares weights between the blocks of "
                             f"a share_groups group, which need one width; layer_widths {list(widths)} differ within "
                             f"a group. Make each group's widths equal or set share_groups to separate them.")


class LayerResize(nn.Module):
    """The projections between blocks of different widths: ``forward(x, i)`` takes ``x`` into block ``i``'s width
    (``i = 0``: from the embeddings) or, for ``i = num_layers``, back to hidden_size. Linear layers where the width
    changes, nothing (the identity, no parameters) where it does not."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        widths = [config.hidden_size, *config.layer_widths, config.hidden_size]
        self.projections = nn.ModuleList(
            nn.Linear(before, after, bias=config.bias) if before != after else nn.Identity()
            for before, after in zip(widths[:-1], widths[1:])
        )

    def forward(self, x: torch.Tensor, index: int) -> torch.Tensor:
        return self.projections[index](x)
