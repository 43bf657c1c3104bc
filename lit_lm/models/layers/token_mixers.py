"""Token mixers: what a block's first sublayer mixes along the sequence with; one entry per
``TransformerConfig.token_mixer`` value in ``TOKEN_MIXERS``. Every mixer is built as ``mixer(config, causal)`` and
called as ``SelfAttention`` is, ``mixer(x, inputs) -> (output, weights or None)``; the block around it (norms,
residual, feed-forward) does not change."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig, config_check
from lit_lm.models.layers.attention import SelfAttention
from lit_lm.models.layers.attention_probs import softmax_weights
from lit_lm.models.layers.inputs import AttentionInputs


def check_synthesizer_length(seq: int, max_length: int) -> None:
    """A synthesizer's weights span ``max_length`` keys: refuse longer inputs clearly."""
    if seq > max_length:
        raise ValueError(f"sequence of {seq} tokens is longer than a synthesizer's fixed mixing weights span "
                         f"(model.max_position_embeddings = {max_length}); shorten data.seq_length or raise "
                         f"max_position_embeddings.")


class Synthesizer(nn.Module):
    """What both synthesizers share (Tay et al. 2020): weights over the keys that no query-key product computes,
    softmaxed over the allowed keys (masked keys weigh exactly 0), times per-head values, then an output projection.
    The weights cover ``max_position_embeddings`` keys; a shorter sequence uses its first ones, a longer one is
    refused. A subclass gives ``logits(x)``: [batch or 1, heads, seq, seq]."""

    def __init__(self, config: TransformerConfig, causal: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.max_length = config.max_position_embeddings
        self.value = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.out = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
        self.attention_dropout = config.attention_dropout
        self.out_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs = AttentionInputs()):
        batch, seq, hidden = x.shape
        check_synthesizer_length(seq, self.max_length)
        weights = softmax_weights(self.logits(x), inputs.key_mask)
        v = self.value(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        y = F.dropout(weights, self.attention_dropout, training=self.training) @ v
        y = y.transpose(1, 2).reshape(batch, seq, hidden)
        return self.out_dropout(self.out(y)), (weights.expand(batch, -1, -1, -1) if inputs.need_weights else None)


class DenseSynthesizer(Synthesizer):
    """Dense Synthesizer (Tay et al. 2020): each token alone, through a 2-layer MLP (hidden -> hidden, ReLU ->
    heads * max_position_embeddings), gives its own row of weights over the key positions, per head."""

    def __init__(self, config: TransformerConfig, causal: bool = False) -> None:
        super().__init__(config, causal)
        self.hidden = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
        self.to_logits = nn.Linear(config.hidden_size, config.num_heads * self.max_length, bias=config.bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        rows = self.to_logits(F.relu(self.hidden(x))).view(batch, seq, self.num_heads, self.max_length)
        return rows[..., :seq].transpose(1, 2)


class RandomSynthesizer(Synthesizer):
    """Random Synthesizer (Tay et al. 2020): the weights are one learned [heads, max_len, max_len] matrix of logits,
    the same for every input; only the values depend on the tokens."""

    def __init__(self, config: TransformerConfig, causal: bool = False) -> None:
        super().__init__(config, causal)
        self.matrix = nn.Parameter(torch.empty(config.num_heads, self.max_length, self.max_length))
        self.init_weights(config.initializer_range)  # never uninitialised memory, even outside a model

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.shape[1]
        return self.matrix[None, :, :seq, :seq].to(x.dtype)

    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.matrix, std=std)


def fourier_transform(x: torch.Tensor) -> torch.Tensor:
    """FNet's mixing: the real part of the 2-D discrete Fourier transform over the sequence and hidden dimensions
    (the last two), computed in float32 and returned in ``x``'s dtype."""
    return torch.fft.fft2(x.float()).real.to(x.dtype)


class FourierMixer(nn.Module):
    """FNet (Lee-Thorp et al. 2021): the block's attention becomes the real part of a 2-D Fourier transform over the
    sequence and hidden dimensions; no parameters, no output projection.

    Padding: a transform over the whole padded row would mix padded positions into real ones, and make real
    positions depend on the padded length. With a padding mask, each row is transformed over its real positions
    only (taken in order, as one sequence of their number), so real positions see exactly what they see with no
    padding at all, whatever sits under the mask; padded positions get 0. Nothing remains of the padding, at the
    price of a per-row loop on padded batches (packed pretraining batches have no padding and take one batched FFT).
    """

    def __init__(self, config: TransformerConfig, causal: bool = False) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, inputs: AttentionInputs = AttentionInputs()):
        if inputs.token_mask is None:
            return fourier_transform(x), None
        real = inputs.token_mask[..., 0].bool()
        out = torch.zeros_like(x)
        for row in range(x.shape[0]):
            out[row, real[row]] = fourier_transform(x[row, real[row]])
        return out, None


@dataclass(frozen=True)
class TokenMixer:
    """A ``token_mixer`` value: how to build it, whether it fixes the longest sequence (``max_position_embeddings``)
    and, when a decoder may not use it, why."""

    build: Callable[[TransformerConfig, bool], nn.Module]
    fixed_length: bool = False
    decoder_refusal: str | None = None


SYNTHESIZER_IN_A_DECODER = ("its weights are tied to absolute key positions up to max_position_embeddings, and the "
                            "decoder's KV cache (keys and values) cannot serve incremental decoding with them; "
                            "lit-lm has it for encoders")
TOKEN_MIXERS: dict[str, TokenMixer] = {
    "attention": TokenMixer(SelfAttention),  # Vaswani et al. 2017
    "synthesizer_dense": TokenMixer(DenseSynthesizer, True, SYNTHESIZER_IN_A_DECODER),  # Tay et al. 2020
    "synthesizer_random": TokenMixer(RandomSynthesizer, True, SYNTHESIZER_IN_A_DECODER),  # Tay et al. 2020
    "fourier": TokenMixer(FourierMixer, False, "it is not causal: each output mixes every position"),  # FNet
}


@config_check
def check_token_mixer(config: TransformerConfig) -> None:
    if config.token_mixer not in TOKEN_MIXERS:
        raise ValueError(f"model config: unknown token_mixer {config.token_mixer!r}; choose one of "
                         f"{sorted(TOKEN_MIXERS)}.")
    if config.token_mixer == "attention":
        return
    unused = [name for name, on in (
        (f"relative_positions: {config.relative_positions}", config.relative_positions != "none"),
        (f"attention_probs: {config.attention_probs}", config.attention_probs != "softmax"),
        ("talking_heads", config.talking_heads), ("qkv_conv_kernel_size", config.qkv_conv_kernel_size),
    ) if on]
    if unused:
        raise ValueError(f"model config: token_mixer {config.token_mixer} has no attention scores for "
                         f"{', '.join(unused)}; switch them off (they act on token_mixer: attention only).")


def build_token_mixer(config: TransformerConfig, causal: bool = False) -> nn.Module:
    """The block's sequence-mixing sublayer that ``config.token_mixer`` names."""
    return TOKEN_MIXERS[config.token_mixer].build(config, causal)


def token_mixer_max_length(config: TransformerConfig) -> int | None:
    """The longest sequence the token mixer takes, or None: any length."""
    return config.max_position_embeddings if TOKEN_MIXERS[config.token_mixer].fixed_length else None
