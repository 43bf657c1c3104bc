"""One config dataclass for every lit-lm transformer; each field's docstring is its ``--help`` text."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

NormType = Literal["layernorm", "rmsnorm", "scalenorm"]
NormPlacement = Literal["pre", "post"]
ActivationName = Literal["gelu", "gelu_tanh", "relu", "squared_relu", "silu", "geglu", "swiglu", "reglu",
                         "glu", "liglu", "elu", "selu", "softplus", "sigmoid"]
PlainActivationName = Literal["gelu", "gelu_tanh", "relu", "squared_relu", "silu", "tanh",
                              "elu", "selu", "softplus", "sigmoid", "linear"]
PositionEmbedding = Literal["learned", "none", "sinusoidal", "scaled_sinusoidal"]
RelativePositions = Literal["none", "disentangled", "rotary", "t5", "alibi"]  # the built-in schemes, for --help
RelativeTerm = Literal["c2p", "p2c"]
AttentionProbs = Literal["softmax", "relu", "sigmoid"]
TokenMixerName = Literal["attention", "synthesizer_dense", "synthesizer_random", "fourier"]

CONFIG_CHECKS: list[Callable[["TransformerConfig"], None]] = []
"""Checks every ``TransformerConfig`` runs after its own: a layer package validates the settings it owns here
(layers/positions: ``relative_positions`` and the scheme's settings), so this file never learns their names."""


def config_check(check: Callable[["TransformerConfig"], None]) -> Callable[["TransformerConfig"], None]:
    """Decorator: run ``check(config)`` on every new ``TransformerConfig``; it raises ``ValueError`` to refuse one."""
    CONFIG_CHECKS.append(check)
    return check


@dataclass
class TransformerConfig:
    """Shape and switches of a lit-lm transformer. The defaults are BERT-base."""

    # ---- shape ----
    vocab_size: int = 30522
    """Number of token ids. Set from the tokenizer by the CLI; do not set it by hand in a recipe."""
    hidden_size: int = 768
    """Width of the residual stream."""
    num_layers: int = 12
    """Number of transformer blocks."""
    num_heads: int = 12
    """Attention heads per block; must divide hidden_size."""
    intermediate_size: int = 3072
    """Width of the feed-forward layer inside each block (of each half, for the GLU activations)."""
    max_position_embeddings: int = 512
    """Size of the learned position table; the longest sequence is this minus position_offset."""
    type_vocab_size: int = 2
    """Number of token types (segments) with their own embedding; 0 drops token-type embeddings (RoBERTa, cramming)."""

    # ---- positions ----
    position_embedding: PositionEmbedding = "learned"
    """Absolute positions added to the token embeddings: 'learned' (BERT), 'none' (DeBERTa: relative only),
    'sinusoidal' (fixed, Vaswani et al. 2017) or 'scaled_sinusoidal' (fixed, times one learned scalar: cramming)."""
    position_offset: int = 0
    """Index of the first position in the learned table; RoBERTa starts past its padding index, at 2."""
    relative_positions: RelativePositions = "none"
    """Relative positions inside attention: 'none', 'disentangled' (DeBERTa, He et al. 2021; encoders only),
    'rotary' (queries and keys rotated by their position, Su et al. 2021) or 't5' (a learned per-head bias for each
    bucket of distances, Raffel et al. 2020), 'alibi' (a fixed per-head penalty linear in the distance, Press et al.
    2022), or any scheme registered in layers/positions. Combine rotary, t5 and alibi with position_embedding: none."""
    rotary_base: float = 10000.0
    """Base of the rotary embedding's frequencies (relative_positions: rotary)."""
    relative_terms: tuple[RelativeTerm, ...] = ("c2p", "p2c")
    """Disentangled attention terms: 'c2p' (content-to-position) and/or 'p2c' (position-to-content)."""
    position_buckets: int = 0
    """Log-bucket relative distances into this many buckets each way (DeBERTa-v3: 256); 0 keeps exact distances.
    With relative_positions: t5, the number of buckets of the bias (T5: 32; half exact, half logarithmic)."""
    max_relative_positions: int = 0
    """Distance at which the log buckets end, or, without buckets, beyond which distances are clipped;
    0 uses max_position_embeddings (T5 uses 128)."""
    share_att_key: bool = False
    """Project relative embeddings with each layer's own query/key projections instead of separate ones (DeBERTa-v3)."""
    relative_embedding_norm: bool = False
    """Normalise the relative position embeddings (DeBERTa-v3's norm_rel_ebd: layer_norm)."""
    conv_kernel_size: int = 0
    """nGiE: a convolution over the embeddings beside the first block (DeBERTa-v2); 0 disables, DeBERTa uses 3."""
    conv_groups: int = 1
    """Groups of the nGiE convolution; must divide hidden_size."""
    conv_act: PlainActivationName = "tanh"
    """Activation of the nGiE convolution."""
    head_position_embedding: bool = False
    """Add learned absolute positions just before the MLM head (DeBERTa's enhanced mask decoder, simplified)."""

    # ---- norms ----
    norm: NormType = "layernorm"
    """Normalisation layer: 'layernorm', 'rmsnorm' (Zhang & Sennrich 2019) or 'scalenorm' (one learned scalar times
    x / ||x||, Nguyen & Salazar 2019)."""
    norm_placement: NormPlacement = "post"
    """'post' normalises after each residual add (BERT 2018); 'pre' before each sublayer (Xiong et al. 2020)."""
    norm_eps: float = 1e-12
    """Epsilon inside every norm."""
    embedding_norm: bool = True
    """Normalise the summed embeddings before the first block (BERT, cramming)."""
    final_norm: bool = False
    """Normalise the output of the last block; needed with pre-LN, where block outputs are not normalised."""

    # ---- layers ----
    qkv_bias: bool = True
    """Biases in the query/key/value projections (cramming drops them: fewer parameters, faster steps)."""
    bias: bool = True
    """Biases in every other linear layer and in the norms."""
    activation: ActivationName = "gelu"
    """Feed-forward activation: 'gelu' (exact, as BERT), 'gelu_tanh' (GPT-2), 'relu', 'squared_relu' (Primer),
    'silu', 'elu', 'selu', 'softplus', 'sigmoid', or a gated one: 'geglu', 'swiglu', 'reglu', 'glu' (sigmoid gate),
    'liglu' (bilinear: no gate nonlinearity) (Shazeer 2020; the essay: "do not help")."""
    talking_heads: bool = False
    """Mix attention logits and weights across heads with learned matrices (Shazeer et al. 2020)."""
    attention_probs: AttentionProbs = "softmax"
    """What turns attention scores into weights: 'softmax', or an unnormalised element-wise 'relu' or 'sigmoid' of
    each score (the essay: "replacing the softmax never works"); masked keys weigh exactly 0 either way."""
    token_mixer: TokenMixerName = "attention"
    """What each block mixes the sequence with, in place of its self-attention (norms, residual and feed-forward
    unchanged): 'attention', a synthesizer (Tay et al. 2020: weights over the keys from each token alone through an
    MLP, 'synthesizer_dense', or one learned matrix, 'synthesizer_random'; inputs up to max_position_embeddings
    tokens; encoders only) or 'fourier' (FNet, Lee-Thorp et al. 2021: the real part of a 2-D FFT over sequence and
    hidden; no parameters; encoders only). The attention switches apply to 'attention' only."""
    qkv_conv_kernel_size: int = 0
    """Depthwise convolution over the sequence after the Q/K/V projections (Primer, So et al. 2021: 3); 0 disables."""
    moe_experts: int = 0
    """Feed-forward experts per block (mixture of experts); 0 keeps one dense feed-forward layer."""
    moe_top_k: int = 1
    """Experts each token is routed to: 1 is the Switch Transformer (Fedus et al. 2021), 2 GShard-style top-2."""
    moe_capacity_factor: float = 1.25
    """Tokens an expert takes per batch, as a multiple of an even share; tokens beyond it skip the feed-forward."""
    moe_aux_loss_weight: float = 0.01
    """Weight of the Switch load-balancing loss added to the training loss."""

    # ---- depth: which blocks have what, and how their residual branches start ----
    ffn_every: int = 1
    """Feed-forward layers only in every k-th block: blocks i (from 0) with (i + 1) % k == 0 have one (k = 2: the
    2nd, 4th, ... block), the others are attention only, with no feed-forward parameters or norm. 1: every block;
    0: no feed-forward layer at all."""
    stochastic_depth: float = 0.0
    """Stochastic depth (Huang et al. 2016): in training, each residual branch (attention, feed-forward) of block i
    (from 0) is dropped per sample with probability stochastic_depth * (i + 1) / num_layers, the survivors scaled up
    by 1 / (1 - that rate); nothing changes in eval mode. 0 disables."""
    residual: Literal["standard", "rezero"] = "standard"
    """'standard' residual adds, or 'rezero' (Bachlechner et al. 2020): x + alpha * F(x) with one learned scalar
    alpha per block, initialised to 0, and no norms inside the blocks (norm_placement is then ignored)."""
    zero_init_residual: bool = False
    """Initialise the output projections of every attention and feed-forward branch to zero, so that every block
    starts as the identity (with pre-LN or rezero; post-LN still normalises)."""
    share_layers: Literal["none", "all", "attention", "ffn"] = "none"
    """Cross-layer parameter sharing (ALBERT, Lan et al. 2020): 'all' shares whole blocks, 'attention' the attention
    sublayers and 'ffn' the feed-forward sublayers (each with its norm), between the blocks of a share_groups group.
    Shared parameters exist once: in the state dict (under the group's first block) and in the optimizer."""
    share_groups: int = 1
    """Groups of consecutive blocks that share (share_layers): block i (from 0) is in group
    i * share_groups // num_layers, so 1 shares across every block (ALBERT) and num_layers shares nothing."""

    # ---- per-layer widths and DeBERTa's enhanced mask decoder (issue 14, part D) ----
    layer_widths: list[int] | None = None
    """One hidden size per block (num_layers of them), e.g. narrow early blocks ("FirstNarrow", the essay: they help
    small models); a linear projection joins blocks of different widths, and projects the embeddings into the first
    block and the last block back to hidden_size (so the embeddings, head, tying and final norm keep hidden_size).
    A block of width w has intermediate_size * w // hidden_size feed-forward units; num_heads must divide each width.
    Relative positions whose state has the model's head size (rotary, disentangled) need every width at hidden_size;
    share_layers needs equal widths within each group. None: every block at hidden_size."""
    enhanced_mask_decoder_layers: int = 0
    """DeBERTa's enhanced mask decoder in full (He et al. 2021), encoders only: this many extra passes through the
    last block before the MLM head, whose queries are the body's output plus absolute positions (the table of
    head_position_embedding, created for it) and whose keys and values are the body's output; each pass's output is
    the next one's queries. No new attention or feed-forward parameters. 0 disables (head_position_embedding alone
    is the simplified variant: the positions added straight before the head)."""

    # ---- masked-LM head ----
    head_transform: bool = True
    """BERT's MLM head transform (dense, activation, norm) before the vocabulary projection."""
    head_activation: PlainActivationName = "gelu"
    """Activation inside the MLM head transform."""
    tie_embeddings: bool = True
    """Share the input embedding matrix with the output projection (Press & Wolf 2017)."""
    output_softmaxes: int = 1
    """Mixture of softmaxes over the vocabulary (Yang et al. 2018): number of components; 1 is a plain softmax."""
    sparse_prediction: bool = False
    """Run the MLM head only on masked positions when labels are given (cramming, Geiping & Goldstein 2022)."""
    sparse_prediction_rate: float | None = None
    """Expected fraction of labelled positions. With it, sparse prediction runs the head on a fixed number of
    positions per batch (this rate of them plus headroom), so shapes are static and the model compiles.
    MaskedLMModule sets it to its mask_rate; None runs the head on exactly the labelled positions."""

    # ---- training ----
    dropout: float = 0.1
    """Dropout on embeddings, attention output and feed-forward output; 0 disables (cramming)."""
    attention_dropout: float = 0.1
    """Dropout on the attention probabilities; 0 disables."""
    initializer_range: float = 0.02
    """Standard deviation of the normal initialisation of linear and embedding weights."""
    pad_token_id: int = 0
    """Id of the padding token. Set from the tokenizer by the CLI."""
    token_dropping_keep: float = 1.0
    """Token dropping (Hou et al. 2022), encoders only, in training only: the blocks token_dropping_start ..
    token_dropping_end - 1 process only this fraction of each sequence's tokens, those whose ids have the highest
    running masked-LM loss (masked and special tokens always kept); the others skip those blocks, keeping the state
    they had before the first. 1 disables; the paper: 0.5. Validation, evaluation and exports process every token.
    Needs absolute positions and the attention token mixer."""
    token_dropping_start: int | None = None
    """First block (from 0) that sees only the kept tokens; None: (num_layers - 1) // 2 (the paper: 6th of 12)."""
    token_dropping_end: int | None = None
    """The block after the last one that sees only the kept tokens, where every token is processed again; None:
    num_layers - 1 (the last block sees every token, as in the paper)."""

    def __post_init__(self) -> None:
        self.relative_terms = tuple(self.relative_terms)
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings", "output_softmaxes", "conv_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"model config: {name} must be a positive integer, got {getattr(self, name)}.")
        for name in ("type_vocab_size", "position_offset", "position_buckets", "max_relative_positions",
                     "conv_kernel_size", "qkv_conv_kernel_size", "moe_experts"):
            if getattr(self, name) < 0:
                raise ValueError(f"model config: {name} must be >= 0, got {getattr(self, name)}.")
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
        if self.position_offset >= self.max_position_embeddings:
            raise ValueError(f"model config: position_offset ({self.position_offset}) must be below "
                             f"max_position_embeddings ({self.max_position_embeddings}).")
        if self.conv_kernel_size and (self.conv_kernel_size % 2 == 0 or self.hidden_size % self.conv_groups):
            raise ValueError(
                f"model config: conv_kernel_size ({self.conv_kernel_size}) must be odd and conv_groups "
                f"({self.conv_groups}) must divide hidden_size ({self.hidden_size})."
            )
        if self.moe_experts and not 1 <= self.moe_top_k <= self.moe_experts:
            raise ValueError(f"model config: moe_top_k must be in [1, moe_experts={self.moe_experts}], "
                             f"got {self.moe_top_k}.")
        if self.moe_capacity_factor <= 0 or self.moe_aux_loss_weight < 0:
            raise ValueError("model config: moe_capacity_factor must be positive and moe_aux_loss_weight >= 0.")
        if self.sparse_prediction_rate is not None and not 0.0 < self.sparse_prediction_rate <= 1.0:
            raise ValueError(f"model config: sparse_prediction_rate must be in (0, 1], "
                             f"got {self.sparse_prediction_rate}.")
        for check in CONFIG_CHECKS:
            check(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_sequence_length(self) -> int:
        return self.max_position_embeddings - self.position_offset

    @property
    def relative_max_distance(self) -> int:
        """The distance that log buckets reach (or, without buckets, the clipping distance)."""
        return self.max_relative_positions or self.max_position_embeddings

    @property
    def relative_span(self) -> int:
        """Relative embeddings each way: the bucket count, or the clipping distance; the table holds twice this."""
        return self.position_buckets or self.relative_max_distance
