"""One config dataclass for every lit-lm transformer; each field's docstring is its ``--help`` text."""

from dataclasses import dataclass
from typing import Literal

NormType = Literal["layernorm", "rmsnorm"]
NormPlacement = Literal["pre", "post"]
Activation = Literal["gelu", "relu"]
PositionEmbedding = Literal["learned"]


@dataclass
class TransformerConfig:
    """Shape and switches of a lit-lm transformer. The defaults are BERT-base."""

    vocab_size: int = 30522
    """Number of token ids. Set from the tokenizer by the CLI; do not set it by hand in a recipe."""
    hidden_size: int = 768
    """Width of the residual stream."""
    num_layers: int = 12
    """Number of transformer blocks."""
    num_heads: int = 12
    """Attention heads per block; must divide hidden_size."""
    intermediate_size: int = 3072
    """Width of the feed-forward layer inside each block."""
    max_position_embeddings: int = 512
    """Longest sequence the learned position table covers; data.seq_length must not exceed it."""
    type_vocab_size: int = 2
    """Number of token types (segments) with their own embedding; 0 drops token-type embeddings (RoBERTa, cramming)."""
    position_embedding: PositionEmbedding = "learned"
    """How positions enter the model: 'learned' absolute embeddings added to the tokens (BERT)."""
    norm: NormType = "layernorm"
    """Normalisation layer: 'layernorm' or 'rmsnorm' (Zhang & Sennrich 2019)."""
    norm_placement: NormPlacement = "post"
    """'post' normalises after each residual add (BERT 2018); 'pre' before each sublayer (Xiong et al. 2020)."""
    norm_eps: float = 1e-12
    """Epsilon inside every norm."""
    embedding_norm: bool = True
    """Normalise the summed embeddings before the first block (BERT, cramming)."""
    final_norm: bool = False
    """Normalise the output of the last block; needed with pre-LN, where block outputs are not normalised."""
    qkv_bias: bool = True
    """Biases in the query/key/value projections (cramming drops them: fewer parameters, faster steps)."""
    bias: bool = True
    """Biases in every other linear layer and in the norms."""
    activation: Activation = "gelu"
    """Feed-forward activation: 'gelu' (exact, erf-based, as BERT) or 'relu'."""
    head_transform: bool = True
    """BERT's MLM head transform (dense, activation, norm) before the vocabulary projection."""
    tie_embeddings: bool = True
    """Share the input embedding matrix with the output projection (Press & Wolf 2017)."""
    sparse_prediction: bool = False
    """Run the MLM head only on masked positions when labels are given (cramming, Geiping & Goldstein 2022)."""
    dropout: float = 0.1
    """Dropout on embeddings, attention output and feed-forward output; 0 disables (cramming)."""
    attention_dropout: float = 0.1
    """Dropout on the attention probabilities; 0 disables."""
    initializer_range: float = 0.02
    """Standard deviation of the normal initialisation of linear and embedding weights."""
    pad_token_id: int = 0
    """Id of the padding token. Set from the tokenizer by the CLI."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"model config: {name} must be a positive integer, got {getattr(self, name)}.")
        if self.type_vocab_size < 0:
            raise ValueError(f"model config: type_vocab_size must be >= 0, got {self.type_vocab_size}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model config: hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads}); "
                f"pick num_heads from the divisors of hidden_size."
            )
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model config: {name} must be in [0, 1), got {getattr(self, name)}.")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"model config: pad_token_id ({self.pad_token_id}) must be a valid id below vocab_size "
                f"({self.vocab_size}); the tokenizer and the model disagree."
            )
        if self.norm_eps <= 0:
            raise ValueError(f"model config: norm_eps must be positive, got {self.norm_eps}.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads
