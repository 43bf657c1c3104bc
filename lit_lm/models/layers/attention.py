"""Multi-head self-attention: fused Q/K/V, torch's scaled_dot_product_attention, and the attention switches."""

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.attention_probs import AttentionProbabilities
from lit_lm.models.layers.conv import DepthwiseSequenceConv
from lit_lm.models.layers.inputs import AttentionInputs
from lit_lm.models.layers.positions import position_scheme


class TalkingHeads(nn.Module):
    """Talking-heads attention (Shazeer et al. 2020): learned head-to-head mixing of the attention logits before
    the softmax and of the attention weights after it. Starts as the identity, i.e. as plain attention."""

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.logits_mix = nn.Parameter(torch.eye(num_heads))
        self.weights_mix = nn.Parameter(torch.eye(num_heads))

    @staticmethod
    def mix(scores: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bhqk,hg->bgqk", scores, matrix)

    def init_weights(self, std: float) -> None:
        with torch.no_grad():
            self.logits_mix.copy_(torch.eye(len(self.logits_mix)))
            self.weights_mix.copy_(torch.eye(len(self.weights_mix)))


def causal_mask(q_len: int, k_len: int, device=None) -> torch.Tensor:
    """Bool [q_len, k_len], True where a query may attend: keys at or before its own position (queries being
    the last q_len positions, as with a KV cache)."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)


def avoids_sdpa_float32_fallback(q: torch.Tensor, bias: torch.Tensor | None, dropout: float) -> bool:
    """Whether to compute bf16 attention explicitly: on CPU, SDPA's fused kernel takes neither dropout nor a bias that
    needs a gradient (DeBERTa's), and its fallback then computes in float32, with float32 matmuls. (Not for fp16: most
    CPUs emulate fp16 matmuls, far slower than float32 ones.)"""
    trainable_bias = bias is not None and bias.requires_grad
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and (dropout > 0 or trainable_bias)


class SelfAttention(nn.Module):
    """Self-attention with one fused Q/K/V projection (one matmul instead of three).

    ``causal=True`` lets each position attend only to itself and earlier ones (decoders). The fast path is SDPA;
    talking heads, a softmax replacement (``config.attention_probs``), a request for the attention weights, or a bf16
    SDPA that would fall back to float32 (``avoids_sdpa_float32_fallback``) take the explicit path, which computes the
    same thing in the compute dtype.
    With a ``cache`` (``LayerCache``), the keys and values of earlier positions come from it and the new ones are
    appended: incremental decoding, one or more new tokens at a time. The model's relative-position scheme
    (``config.relative_positions``) rotates the queries and keys and adds its bias to the scores.
    """

    def __init__(self, config: TransformerConfig, causal: bool = False) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.causal = causal
        self.positions = position_scheme(config.relative_positions)
        self.scale = self.positions.attention_scale(config)
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.qkv_conv = (  # Primer: depthwise convolution after the Q/K/V projections (So et al. 2021)
            DepthwiseSequenceConv(3 * config.hidden_size, config.qkv_conv_kernel_size, causal, config.qkv_bias)
            if config.qkv_conv_kernel_size else None
        )
        self.relative = self.positions.layer_module(config)  # e.g. DeBERTa's per-layer position projections
        self.talking_heads = TalkingHeads(config.num_heads) if config.talking_heads else None
        self.probs = AttentionProbabilities(config.attention_probs)  # softmax, or a replacement of it
        self.out = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
        self.attention_dropout = config.attention_dropout
        self.out_dropout = nn.Dropout(config.dropout)

    def _project(self, x: torch.Tensor, token_mask: torch.Tensor | None, cache) -> torch.Tensor:
        """Queries, keys and values of ``x``, each [batch, heads, seq, head_dim], stacked on a first dimension."""
        batch, seq, _ = x.shape
        qkv = self.qkv(x)
        if self.qkv_conv is not None:
            qkv = self.qkv_conv(qkv, token_mask, cache)
        return qkv.view(batch, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def forward(
        self, x: torch.Tensor, inputs: AttentionInputs = AttentionInputs(), query: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [batch, seq, hidden]; ``inputs``: the masks, relative positions and cache of this forward; ``query``
        (the shape of ``x``, encoders only): take the queries from it, the keys and values from ``x`` (DeBERTa's
        enhanced mask decoder). Returns the output and, with ``inputs.need_weights``, the attention weights
        [batch, heads, seq, keys]."""
        key_mask, relative, token_mask, need_weights, cache = inputs
        batch, seq, hidden = x.shape
        q, k, v = self._project(x, token_mask, cache)
        if query is not None:
            q = self._project(query, token_mask, None)[0]
        if relative is None and self.positions.needs_state:
            raise ValueError(f"{self.positions.name} attention needs the model's relative positions "
                             f"(AttentionInputs.relative)")
        q, k = self.positions.rotate(relative, q, k)
        if cache is not None:
            k, v = cache.append(k, v)
        keys = k.shape[2]
        bias = self.positions.score_bias(relative, q, k, self)
        allowed = key_mask
        dropout = self.attention_dropout if self.training else 0.0
        explicit = (need_weights or self.talking_heads is not None or not self.probs.fused
                    or avoids_sdpa_float32_fallback(q, bias, dropout))
        causal = self.causal and seq > 1  # a single new token may attend to every cached one
        if causal and (allowed is not None or bias is not None or explicit or keys != seq):
            mask = causal_mask(seq, keys, x.device)
            allowed = mask if allowed is None else allowed & mask
        weights = None
        if explicit:
            y, weights = self._explicit_attention(q, k, v, bias, allowed, dropout)
        else:
            mask = allowed
            if bias is not None:
                mask = bias if allowed is None else torch.where(allowed, bias, torch.finfo(bias.dtype).min)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale,
                is_causal=causal and mask is None,
            )
        y = y.transpose(1, 2).reshape(batch, seq, hidden)
        return self.out_dropout(self.out(y)), weights

    def _explicit_attention(self, q, k, v, bias, allowed, dropout: float):
        scores = (q @ k.transpose(-1, -2)).mul_(self.scale)  # in place: the matmul keeps its inputs, not its output
        if bias is not None:
            scores = scores.add_(bias)
        if self.talking_heads is not None:
            scores = self.talking_heads.mix(scores, self.talking_heads.logits_mix)
        weights = self.probs(scores, allowed)  # masks after the logits mix, which would otherwise spread masked logits
        if self.talking_heads is not None:
            weights = self.talking_heads.mix(weights, self.talking_heads.weights_mix)
        return F.dropout(weights, dropout, training=dropout > 0) @ v, weights
