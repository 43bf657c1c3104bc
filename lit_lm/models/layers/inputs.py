"""What every attention layer needs besides its input, computed once per forward by the body: ``AttentionInputs``."""

from typing import Any, NamedTuple

import torch

from lit_lm.models.layers.cache import LayerCache


class AttentionInputs(NamedTuple):
    """The per-forward inputs every block passes to its attention layer (and the token mask to its FFN)."""

    key_mask: torch.Tensor | None = None
    """Bool [batch, 1, 1 or queries, keys], True = attend; None when nothing is padded."""
    relative: Any = None
    """The state the model's relative-position scheme computed for this forward (see layers/positions)."""
    token_mask: torch.Tensor | None = None
    """Float [batch, seq, 1], 1 = real token, for layers that mix along the sequence or route tokens."""
    need_weights: bool = False
    """Return the attention weights [batch, heads, queries, keys] too."""
    cache: LayerCache | None = None
    """This layer's cache in incremental decoding (keys = cached positions + seq), else None."""


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[batch, seq] 1/0 mask -> bool [batch, 1, 1, seq] for SDPA (True = attend); None when nothing is padded."""
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    if bool(mask.all()):
        return None  # keeps SDPA on its fastest, mask-free path
    return mask[:, None, None, :]


def causal_key_mask(attention_mask: torch.Tensor | None, queries: int) -> torch.Tensor | None:
    """[batch, keys] 1/0 mask -> bool [batch, 1, queries, keys] for the last ``queries`` positions, True = attend;
    None when no real position needs it.

    Right padding needs no mask: causal attention already keeps real positions from seeing later padding. Left
    padding (batched prompts of different lengths) masks the padded keys, and lets each position see itself so
    that padded queries (whose outputs are ignored) never have an empty row, whose NaN would spread.
    """
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    if bool((mask[:, 1:] <= mask[:, :-1]).all()):  # every row: real tokens, then padding (or none)
        return None
    keys = mask.shape[1]
    itself = torch.eye(queries, keys, dtype=torch.bool, device=mask.device).roll(keys - queries, dims=1)
    return mask[:, None, None, :] | itself


def attention_inputs(attention_mask: torch.Tensor | None, seq: int, dtype: torch.dtype, causal: bool,
                     relative: Any = None, need_weights: bool = False) -> AttentionInputs:
    """The masks of a ``[batch, keys]`` 1/0 ``attention_mask`` (keys = cached positions + ``seq`` with a cache)."""
    if not causal:
        key_mask = padding_mask(attention_mask)
        token_mask = None if key_mask is None else key_mask[:, 0, 0, :, None].to(dtype)
        return AttentionInputs(key_mask, relative, token_mask, need_weights)
    token_mask = None
    if attention_mask is not None and not bool(attention_mask[:, -seq:].bool().all()):
        token_mask = attention_mask[:, -seq:, None].to(dtype)  # padding: not routed to experts nor convolved
    return AttentionInputs(causal_key_mask(attention_mask, seq), relative, token_mask, need_weights)
