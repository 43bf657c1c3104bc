"""DeBERTa's enhanced mask decoder (EMD), in full: absolute positions enter only at the end, as queries."""

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig, config_check
from lit_lm.models.layers.inputs import AttentionInputs


@config_check
def check_enhanced_mask_decoder(config: TransformerConfig) -> None:
    layers = config.enhanced_mask_decoder_layers
    if layers < 0:
        raise ValueError(f"model config: enhanced_mask_decoder_layers must be >= 0 (0: off), got {layers}.")
    if layers and config.layer_widths is not None and config.layer_widths[-1] != config.hidden_size:
        raise ValueError(f"model config: enhanced_mask_decoder_layers reuses the last block, which must then have "
                         f"width hidden_size ({config.hidden_size}); layer_widths[-1] is {config.layer_widths[-1]}.")
    if layers and config.token_mixer != "attention":
        raise ValueError(f"model config: enhanced_mask_decoder_layers needs attention in the last block (its queries "
                         f"carry the positions); token_mixer {config.token_mixer} has no queries. Set one to its "
                         f"default.")


class EnhancedMaskDecoder(nn.Module):
    """DeBERTa's enhanced mask decoder (He et al. 2021): ``layers`` passes through the body's last block, whose
    queries start as the body's output plus the absolute positions, and whose keys and values are the body's
    output; each pass's output is the next pass's queries. It reuses the last block's weights, as DeBERTa does (no
    parameters of its own), and the body's final norm ends it, as it ends the body. (DeBERTa's own code feeds the
    next-to-last layer's output and replaces the last layer's pass; here the passes come after the whole body.)"""

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, body: nn.Module,
                inputs: AttentionInputs) -> torch.Tensor:
        """hidden: the body's output [batch, seq, hidden]; positions: [seq, hidden]; body: the ``Transformer``;
        inputs: its ``attention_inputs`` for this forward. Returns the decoder's output, the MLM head's input."""
        block = body.blocks[-1]
        query = hidden + positions
        for _ in range(self.layers):
            query = block(hidden, inputs, query=query).hidden
        return body.final_norm(query)
