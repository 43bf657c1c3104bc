"""Position embeddings."""

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig


class LearnedPositionEmbedding(nn.Module):
    """A learned vector per absolute position, added to the token embeddings (BERT, GPT-2)."""

    no_weight_decay = True  # an embedding table: excluded from AdamW's weight decay like nn.Embedding

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.max_positions = config.max_position_embeddings
        self.weight = nn.Parameter(torch.empty(config.max_position_embeddings, config.hidden_size))

    def forward(self, seq_len: int) -> torch.Tensor:
        if seq_len > self.max_positions:
            raise ValueError(
                f"sequence of {seq_len} tokens is longer than model.max_position_embeddings ({self.max_positions}); "
                f"shorten data.seq_length or raise max_position_embeddings."
            )
        return self.weight[:seq_len]
