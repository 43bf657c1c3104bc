"""Cross-layer parameter sharing (ALBERT, Lan et al. 2020): groups of consecutive blocks reuse one set of weights."""

from torch import nn

from lit_lm.models.config import TransformerConfig, config_check

# What each share_layers value shares: block attributes, a sublayer together with its norm
SHARED_PARTS = {
    "none": (),
    "all": ("attn_norm", "attn", "ffn_norm", "ffn", "rezero"),
    "attention": ("attn_norm", "attn"),
    "ffn": ("ffn_norm", "ffn"),
}


@config_check
def check_sharing(config: TransformerConfig) -> None:
    if config.share_layers not in SHARED_PARTS:
        raise ValueError(f"model config: share_layers must be one of {list(SHARED_PARTS)}, "
                         f"got {config.share_layers!r}.")
    if not 1 <= config.share_groups <= config.num_layers:
        raise ValueError(f"model config: share_groups must be in [1, num_layers={config.num_layers}], "
                         f"got {config.share_groups}.")


def layer_group(config: TransformerConfig, index: int) -> int:
    """The sharing group of block ``index``: ``index * share_groups // num_layers`` (consecutive blocks, equal sizes
    when share_groups divides num_layers, otherwise sizes that differ by one)."""
    return index * config.share_groups // config.num_layers


def borrow(block: nn.Module, name: str, module: nn.Module) -> None:
    """Make ``block.<name>`` the very module another block owns, without registering it here: its parameters stay
    the owner's alone, so the state dict, the optimizer and parameter counts hold them once."""
    del block._modules[name]
    object.__setattr__(block, name, module)


def share_parameters(blocks: nn.ModuleList, config: TransformerConfig) -> None:
    """Share ``config.share_layers``'s parts within each ``layer_group``: the group's first block that has a part owns
    it (with ffn_every, the first block with a feed-forward layer), the group's later blocks borrow it."""
    owners: dict[tuple[int, str], nn.Module] = {}
    for index, block in enumerate(blocks):
        for name in SHARED_PARTS[config.share_layers]:
            module = block._modules.get(name)
            if module is None:
                continue
            owner = owners.setdefault((layer_group(config, index), name), module)
            if owner is not module:
                borrow(block, name, owner)
