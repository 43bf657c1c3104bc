"""Building blocks shared by every lit-lm model family."""

from lit_lm.models.layers.activations import Activation, activation_fn
from lit_lm.models.layers.attention import SelfAttention, TalkingHeads
from lit_lm.models.layers.block import BlockOutput, TransformerBlock
from lit_lm.models.layers.cache import KVCache, LayerCache
from lit_lm.models.layers.conv import DepthwiseSequenceConv, NGramInducedEmbedding
from lit_lm.models.layers.disentangled import DisentangledAttentionBias
from lit_lm.models.layers.ffn import FeedForward
from lit_lm.models.layers.heads import MaskedLMHead, MixtureOfSoftmaxes
from lit_lm.models.layers.moe import MixtureOfExperts
from lit_lm.models.layers.norms import build_norm
from lit_lm.models.layers.positions import (
    LearnedPositionEmbedding, RelativePositionEmbedding, RotaryEmbedding, T5RelativeBias, build_relative_positions,
)

__all__ = [
    "Activation", "activation_fn", "SelfAttention", "TalkingHeads", "BlockOutput", "TransformerBlock",
    "DepthwiseSequenceConv", "NGramInducedEmbedding", "DisentangledAttentionBias", "FeedForward", "MaskedLMHead",
    "MixtureOfSoftmaxes", "MixtureOfExperts", "build_norm", "LearnedPositionEmbedding", "RelativePositionEmbedding",
    "RotaryEmbedding", "T5RelativeBias", "build_relative_positions", "KVCache", "LayerCache",
]
