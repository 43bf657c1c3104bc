"""Absolute positions: a learned vector per position, added to the token embeddings (BERT, GPT-2)."""

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig


class LearnedPositionEmbedding(nn.Module):
    """A learned vector per absolute position, added to the token embeddings (BERT, GPT-2).

    Positions count from ``config.position_offset``: RoBERTa's table starts past its padding index.
    """

    no_weight_decay = True  # an embedding table: excluded from AdamW's weight decay like nn.Embedding

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.offset = config.position_offset
        self.weight = nn.Parameter(torch.empty(config.max_position_embeddings, config.hidden_size))

    def forward(self, seq_len: int, start: int = 0) -> torch.Tensor:
        """The vectors of positions ``start .. start + seq_len - 1``."""
        first = self.offset + start
        if first + seq_len > len(self.weight):
            raise ValueError(
                f"sequence of {start + seq_len} tokens is longer than the model takes "
                f"({len(self.weight) - self.offset}: "
                f"model.max_position_embeddings minus position_offset); shorten data.seq_length (or the prompt and "
                f"max_new_tokens) or raise max_position_embeddings."
            )
        return self.weight[first : first + seq_len]

    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.weight, std=std)
