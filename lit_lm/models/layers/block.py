"""One transformer block: attention and feed-forward sublayers with residuals, pre- or post-norm."""

from typing import NamedTuple

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.ffn import FeedForward, has_ffn
from lit_lm.models.layers.inputs import AttentionInputs
from lit_lm.models.layers.moe import MixtureOfExperts
from lit_lm.models.layers.norms import build_norm
from lit_lm.models.layers.residual import ReZero
from lit_lm.models.layers.stochastic_depth import StochasticDepth, drop_rate
from lit_lm.models.layers.token_mixers import build_token_mixer


class BlockOutput(NamedTuple):
    hidden: torch.Tensor
    attention: torch.Tensor | None = None  # [batch, heads, seq, seq] when asked for
    aux_loss: torch.Tensor | None = None  # the mixture of experts' load-balancing loss, when there is one


class TransformerBlock(nn.Module):
    """Block ``index`` (from 0) of the stack: ``index`` decides whether it has a feed-forward layer (``ffn_every``)
    and its stochastic-depth rate. With ``residual: rezero`` it has no norms and gates both branches by its ReZero."""

    def __init__(self, config: TransformerConfig, causal: bool = False, index: int = 0) -> None:
        super().__init__()
        rezero = config.residual == "rezero"
        self.pre_norm = config.norm_placement == "pre" or rezero  # pre-LN: Xiong et al. 2020
        self.attn_norm = nn.Identity() if rezero else build_norm(config)
        self.attn = build_token_mixer(config, causal)  # self-attention, or what config.token_mixer puts there
        with_ffn = has_ffn(config, index)
        self.ffn_norm = (nn.Identity() if rezero else build_norm(config)) if with_ffn else None
        self.ffn = (MixtureOfExperts(config) if config.moe_experts else FeedForward(config)) if with_ffn else None
        self.rezero = ReZero() if rezero else None
        self.drop_branch = StochasticDepth(drop_rate(config, index)) if config.stochastic_depth else None

    def _ffn(self, x: torch.Tensor, token_mask: torch.Tensor | None):
        if isinstance(self.ffn, MixtureOfExperts):
            return self.ffn(x, token_mask)
        return self.ffn(x), None

    def _branch(self, h: torch.Tensor) -> torch.Tensor:
        """A residual branch's output as it is added: dropped (stochastic depth) and gated (ReZero) when asked."""
        if self.drop_branch is not None:
            h = self.drop_branch(h)
        return h if self.rezero is None else self.rezero(h)

    def _attend(self, x: torch.Tensor, inputs: AttentionInputs, query: torch.Tensor | None):
        """The attention branch; with ``query``, its queries come from ``query`` (DeBERTa's enhanced mask decoder)."""
        return self.attn(x, inputs) if query is None else self.attn(x, inputs, query=query)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs = AttentionInputs(),
                query: torch.Tensor | None = None) -> BlockOutput:
        """x: [batch, seq, hidden]; ``inputs`` as ``SelfAttention.forward``. With ``query`` (DeBERTa's enhanced mask
        decoder), attention takes its queries from ``query``, its keys and values from ``x``, and the residual stream
        that continues is ``query``'s."""
        aux_loss = None
        if self.pre_norm:
            h, weights = self._attend(self.attn_norm(x), inputs, None if query is None else self.attn_norm(query))
            x = (x if query is None else query) + self._branch(h)
            if self.ffn is not None:
                h, aux_loss = self._ffn(self.ffn_norm(x), inputs.token_mask)
                x = x + self._branch(h)
            return BlockOutput(x, weights, aux_loss)
        h, weights = self._attend(x, inputs, query)
        x = self.attn_norm((x if query is None else query) + self._branch(h))
        if self.ffn is None:
            return BlockOutput(x, weights)
        h, aux_loss = self._ffn(x, inputs.token_mask)
        return BlockOutput(self.ffn_norm(x + self._branch(h)), weights, aux_loss)
