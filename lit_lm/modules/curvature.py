"""The Gauss-Newton-Bartlett estimate of the loss's diagonal curvature (Liu et al. 2023, "Sophia", Sophia-G).

For a loss that is a mean of ``N`` negative log-likelihoods, draw each target from the model's own prediction instead
of the data (``sampled_cross_entropy``, ...), take the gradient ``g`` of the mean of those sampled losses: its square
times ``N`` is, in expectation, the diagonal of the Gauss-Newton matrix (Bartlett's identity: the expected outer
product of a likelihood's score is its Fisher information). One extra backward, no second derivative, so it runs
under Lightning's automatic optimization, fused attention kernels and torch.compile. ``GaussNewtonBartlett`` sums
the sampled gradients over the micro-batches of one optimizer step (and over the ranks under DDP) before squaring.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lit_lm.models.output import IGNORE_INDEX
from lit_lm.models.replaced_token import sample_replacements


@dataclass
class SampledLoss:
    """One term of a training loss at sampled targets: ``total`` (the sum over its ``count`` items; the training
    loss has ``weight`` times their mean) under its ``name`` (the same names on every micro-batch and rank)."""

    name: str
    total: torch.Tensor
    count: torch.Tensor
    weight: float = 1.0


def sampled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor | None, name: str = "lm",
                          weight: float = 1.0) -> SampledLoss:
    """Cross-entropy at classes drawn from ``logits``' softmax where ``labels`` is not -100 (every row when None):
    the term of a masked, causal or classification loss."""
    logits = logits.reshape(-1, logits.shape[-1])
    if labels is not None:
        logits = logits[labels.reshape(-1) != IGNORE_INDEX]
    draws = sample_replacements(logits)  # one class per row from its softmax; no gradient through the draw
    return SampledLoss(name, F.cross_entropy(logits.float(), draws, reduction="sum"),
                       torch.tensor(len(draws), device=logits.device), weight)


def sampled_binary_cross_entropy(logits: torch.Tensor, mask: torch.Tensor, name: str,
                                 weight: float = 1.0) -> SampledLoss:
    """Binary cross-entropy at targets drawn from ``sigmoid(logits)`` where ``mask`` is true (ELECTRA's
    discriminator)."""
    logits = logits[mask].float()
    draws = torch.bernoulli(torch.sigmoid(logits.detach()))
    return SampledLoss(name, F.binary_cross_entropy_with_logits(logits, draws, reduction="sum"),
                       torch.tensor(len(draws), device=logits.device), weight)


def sampled_squared_error(predictions: torch.Tensor, name: str = "regression") -> SampledLoss:
    """Squared error at targets drawn from N(prediction, 1/2): the mean-squared-error loss is that Gaussian's
    negative log-likelihood up to a constant, so the estimate is its Gauss-Newton diagonal, 2 J^T J per item."""
    predictions = predictions.float()
    draws = predictions.detach() + torch.randn_like(predictions) * 0.5 ** 0.5
    return SampledLoss(name, ((predictions - draws) ** 2).sum(), torch.tensor(len(draws), device=predictions.device))


class GaussNewtonBartlett:
    """Accumulates sampled-loss gradients over the parameters ``params`` and returns the diagonal estimate,
    ``sum over terms of weight * (sum of the term's gradients)^2 / (its item count)``, one tensor per parameter."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = params
        self.sums: dict[str, list[torch.Tensor]] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.weights: dict[str, float] = {}
        self.offered = 0
        """Samples offered since the last estimate, finite or not (none: the model gave the optimizer nothing)."""
        self.skipped = 0
        """Of those, the ones dropped because a gradient was not finite (fp16 overflow)."""

    def add(self, sampled: SampledLoss, scale: float = 1.0) -> None:
        """Add the gradient of ``sampled.total`` (taken as ``scale`` times the mean, as the training's gradient is
        under fp16's scaler, then scaled back); the training graph is kept for the training backward."""
        self.offered += 1
        term = self.sums.setdefault(sampled.name, [torch.zeros_like(p) for p in self.params])
        self.weights[sampled.name] = sampled.weight
        count = self.counts.setdefault(sampled.name, torch.zeros((), device=sampled.total.device))
        items = int(sampled.count)
        if sampled.total.requires_grad and items > 0:
            # the gradient of the mean, at the scale of the training's (a sum's would be `items` times larger)
            grads = torch.autograd.grad(sampled.total * (scale / items), self.params, retain_graph=True,
                                        allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
            if not torch.isfinite(torch.stack([g.float().sum() for g in grads])).all():
                self.skipped += 1  # the term still exists, so every rank reduces the same tensors
                return
            torch._foreach_add_(term, grads, alpha=items / scale)
        count.add_(items)

    def estimate(self) -> list[torch.Tensor] | None:
        """The estimate (summed over the ranks of a process group first), then start afresh; None when nothing
        finite was added on any rank."""
        names = sorted(self.sums)
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            for name in names:  # the same names in the same order on every rank (a module's terms are fixed)
                flat = torch.cat([t.flatten().float() for t in self.sums[name]]
                                 + [self.counts[name].reshape(1).float()])
                torch.distributed.all_reduce(flat)
                self.counts[name] = flat[-1]
                pieces = flat[:-1].split([t.numel() for t in self.sums[name]])
                self.sums[name] = [piece.view_as(t).to(t.dtype) for piece, t in zip(pieces, self.sums[name])]
        estimate = None
        for name in names:
            count = float(self.counts[name])
            if count == 0:
                continue
            squares = torch._foreach_mul(self.sums[name], self.sums[name])
            torch._foreach_mul_(squares, self.weights[name] / count)
            estimate = squares if estimate is None else torch._foreach_add(estimate, squares)
        self.sums, self.counts, self.weights, self.offered, self.skipped = {}, {}, {}, 0, 0
        return estimate
