"""Building blocks shared by every lit-lm model family."""

from lit_lm.models.layers.attention import SelfAttention
from lit_lm.models.layers.block import TransformerBlock
from lit_lm.models.layers.ffn import FeedForward
from lit_lm.models.layers.heads import MaskedLMHead
from lit_lm.models.layers.norms import build_norm
from lit_lm.models.layers.positions import LearnedPositionEmbedding

__all__ = ["SelfAttention", "TransformerBlock", "FeedForward", "MaskedLMHead", "build_norm", "LearnedPositionEmbedding"]
