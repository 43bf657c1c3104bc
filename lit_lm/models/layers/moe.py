"""A mixture-of-experts feed-forward layer with fixed expert capacity (static shapes, so it compiles)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.activations import Activation


class MixtureOfExperts(nn.Module):
    """Top-k routed feed-forward experts: Switch Transformer for k=1 (Fedus et al. 2021), top-2 as GShard
    (Lepikhin et al. 2020), after Shazeer et al. 2017.

    A linear router scores every token against every expert; each token goes to its k best experts, weighted by
    the router's probabilities (renormalised over the k for k > 1). Each expert takes at most
    ``capacity = ceil(moe_capacity_factor * tokens * k / experts)`` tokens per batch, first choices before second
    ones; a token past that skips the layer (its residual carries it). Padding (``token_mask`` 0) is never routed.
    ``forward`` returns the output and Switch's load-balancing loss, ``experts * sum_e(f_e * p_e)``: ``f_e`` the
    fraction of routed tokens sent to expert e, ``p_e`` its mean router probability; 1 when perfectly balanced.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.num_experts = config.moe_experts
        self.top_k = config.moe_top_k
        self.capacity_factor = config.moe_capacity_factor
        self.router = nn.Linear(config.hidden_size, config.moe_experts, bias=False)
        self.act = Activation(config.activation)
        hidden, inner = config.hidden_size, config.intermediate_size
        up_width = inner * self.act.width_multiplier
        self.up = nn.Parameter(torch.empty(config.moe_experts, hidden, up_width))
        self.down = nn.Parameter(torch.empty(config.moe_experts, inner, hidden))
        self.up_bias = nn.Parameter(torch.zeros(config.moe_experts, 1, up_width)) if config.bias else None
        self.down_bias = nn.Parameter(torch.zeros(config.moe_experts, 1, hidden)) if config.bias else None
        self.dropout = nn.Dropout(config.dropout)

    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.up, std=std)
        nn.init.normal_(self.down, std=std)
        for bias in (self.up_bias, self.down_bias):
            if bias is not None:
                nn.init.zeros_(bias)

    def capacity(self, tokens: int) -> int:
        return min(tokens, math.ceil(self.capacity_factor * tokens * self.top_k / self.num_experts))

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        n, experts, k = len(tokens), self.num_experts, self.top_k
        routed = torch.ones(n, dtype=torch.bool, device=x.device) if token_mask is None else token_mask.reshape(-1) > 0
        probs = self.router(tokens).float().softmax(dim=-1)  # [n, experts]
        gate, expert = probs.topk(k, dim=-1)  # [n, k]
        if k > 1:
            gate = gate / gate.sum(dim=-1, keepdim=True)

        # one row per (choice, token), first choices first: a slot in the chosen expert's buffer, or the spare row
        expert = expert.t().reshape(-1)
        gate = gate.t().reshape(-1)
        routed = routed.repeat(k)
        one_hot = F.one_hot(expert, experts) * routed[:, None]
        slot = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1) - 1  # position among the tokens sent to that expert
        capacity = self.capacity(n)
        kept = routed & (slot < capacity)
        spare = experts * capacity
        row = torch.where(kept, expert * capacity + slot, spare)

        buffer = tokens.new_zeros(spare + 1, shape[-1]).index_add(0, row, tokens.repeat(k, 1))
        h = buffer[:spare].view(experts, capacity, -1)
        h = h @ self.up if self.up_bias is None else torch.baddbmm(self.up_bias, h, self.up)
        h = self.act(h)
        h = h @ self.down if self.down_bias is None else torch.baddbmm(self.down_bias, h, self.down)
        h = torch.cat([h.reshape(spare, -1), h.new_zeros(1, shape[-1])])
        out = (h[row] * (gate * kept).to(h.dtype)[:, None]).view(k, n, -1).sum(dim=0)

        # load balance over the routed tokens
        count = routed[:n].sum().clamp(min=1)
        fraction = (one_hot.float().sum(dim=0)) / (count * k)
        mean_prob = (probs * routed[:n, None]).sum(dim=0) / count
        aux_loss = experts * (fraction * mean_prob).sum()
        return self.dropout(out.view(shape)), aux_loss
