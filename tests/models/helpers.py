"""Tiny configs and padded batches shared by the model tests."""

import torch

from lit_lm.models import TransformerConfig


def tiny(**overrides) -> TransformerConfig:
    base = dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                max_position_embeddings=24, dropout=0.0, attention_dropout=0.0)
    return TransformerConfig(**{**base, **overrides})


def padded(real_len: int = 10, pad: int = 4, vocab: int = 50, seed: int = 0):
    """One sequence alone, the same padded (pad id 0), and padded with garbage under the mask."""
    g = torch.Generator().manual_seed(seed)
    real = torch.randint(5, vocab, (1, real_len), generator=g)
    padded_ids = torch.cat([real, torch.zeros(1, pad, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, real_len), torch.zeros(1, pad)], dim=1).long()
    garbage = padded_ids.clone()
    garbage[:, real_len:] = torch.randint(5, vocab, (1, pad), generator=g)
    return real, padded_ids, garbage, mask
