"""What turns attention scores into weights: one entry per ``TransformerConfig.attention_probs`` value."""

from collections.abc import Callable

import torch
from torch import nn


def softmax_weights(scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """The softmax over the allowed keys (Vaswani et al. 2017): masked keys get the lowest logit, hence weight 0."""
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1)


def elementwise(fn: Callable[[torch.Tensor], torch.Tensor]):
    """Weights from each score alone, unnormalised; masked keys are zeroed after ``fn``, so they weigh exactly 0."""

    def weights(scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        out = fn(scores)
        return out if allowed is None else out.masked_fill(~allowed, 0.0)

    return weights


# Softmax replacements: the essay's verdict, "replacing the softmax never works"
ATTENTION_PROBS: dict[str, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "softmax": softmax_weights,
    "relu": elementwise(torch.relu),  # ReLU attention weights, unnormalised
    "sigmoid": elementwise(torch.sigmoid),  # sigmoid attention weights, unnormalised
}
FUSED_PROBS = {"softmax"}  # what torch's scaled_dot_product_attention computes; the others take the explicit path


class AttentionProbabilities(nn.Module):
    """Scores [batch, heads, queries, keys] and the bool mask of allowed keys (or None) -> attention weights, with
    exactly 0 on every masked key. ``fused``: SDPA computes the same, so attention may take its fast path."""

    def __init__(self, name: str) -> None:
        super().__init__()
        try:
            self.fn = ATTENTION_PROBS[name]
        except KeyError:
            raise ValueError(f"model config: unknown attention_probs {name!r}; choose one of "
                             f"{sorted(ATTENTION_PROBS)}.") from None
        self.name, self.fused = name, name in FUSED_PROBS

    def forward(self, scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        return self.fn(scores, allowed)

    def extra_repr(self) -> str:
        return self.name
