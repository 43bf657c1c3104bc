"""Building blocks shared by every lit-lm model family."""

from lit_lm.models.layers.activations import Activation, activation_fn
from lit_lm.models.layers.attention import SelfAttention, TalkingHeads
from lit_lm.models.layers.block import BlockOutput, TransformerBlock
from lit_lm.models.layers.cache import KVCache, LayerCache
from lit_lm.models.layers.conv import DepthwiseSequenceConv, NGramInducedEmbedding
from lit_lm.models.layers.ffn import FeedForward
from lit_lm.models.layers.heads import MaskedLMHead, MixtureOfSoftmaxes
from lit_lm.models.layers.inputs import AttentionInputs
from lit_lm.models.layers.moe import MixtureOfExperts
from lit_lm.models.layers.norms import build_norm
from lit_lm.models.layers.positions import PositionScheme, position_scheme, register_position_scheme
from lit_lm.models.layers.positions.disentangled import DisentangledAttentionBias, RelativePositionEmbedding
from lit_lm.models.layers.positions.learned import LearnedPositionEmbedding
from lit_lm.models.layers.positions.rotary import RotaryEmbedding
from lit_lm.models.layers.positions.t5 import T5RelativeBias

__all__ = [
    "Activation", "activation_fn", "SelfAttention", "TalkingHeads", "BlockOutput", "TransformerBlock",
    "DepthwiseSequenceConv", "NGramInducedEmbedding", "DisentangledAttentionBias", "FeedForward", "MaskedLMHead",
    "MixtureOfSoftmaxes", "MixtureOfExperts", "build_norm", "LearnedPositionEmbedding", "RelativePositionEmbedding",
    "RotaryEmbedding", "T5RelativeBias", "KVCache", "LayerCache", "AttentionInputs", "PositionScheme",
    "position_scheme", "register_position_scheme",
]
