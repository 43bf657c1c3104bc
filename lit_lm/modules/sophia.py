"""Sophia-G (Liu et al. 2023, "Sophia: a scalable stochastic second-order optimizer for language model
pre-training"): pytorch-optimizer's ``SophiaH`` step fed the Gauss-Newton-Bartlett curvature estimate.

``SophiaH`` estimates the curvature itself with Hutchinson's method, which needs ``loss.backward(create_graph=True)``:
Lightning's automatic optimization does not run that, and the fused CPU attention kernels have no second derivative.
It also takes an estimate from outside (``step(hessian=...)``), and this is the paper's other estimator, the one its
GPT-2 runs favour: one more backward of the loss at targets sampled from the model (``lit_lm.modules.curvature``).
Imported only when ``model.optimizer.name`` is sophia (it needs the optimizers extra).
"""

from collections.abc import Callable

import torch
from pytorch_optimizer import SophiaH

from lit_lm.modules.curvature import GaussNewtonBartlett, SampledLoss


class SophiaG(SophiaH):
    """Per coordinate, ``param -= lr * clip(m / max(rho * h, eps), -1, 1)`` (and decoupled weight decay), with ``m``
    the gradient's and ``h`` the curvature estimate's exponential averages (``betas``). ``h`` is refreshed on every
    ``update_period``-th step (the first included): on each micro-batch of such a step the module hands its loss at
    sampled targets to ``add_sampled_loss`` (``PretrainingModule.training_loss`` does). ``lr`` is thus the largest
    step a coordinate takes, as Lion's; ``rho`` sets where clipping starts."""

    def __init__(self, params, lr: float, betas: tuple[float, float], rho: float, update_period: int,
                 weight_decay: float = 0.0, eps: float = 1e-12):
        # p=1: SophiaH's clip bound; the paper's rho scales the estimate instead, so that lr is the step bound
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay, weight_decouple=True, p=1.0,
                         update_period=update_period, eps=eps)
        self.rho = rho
        self.curvature = GaussNewtonBartlett([p for group in self.param_groups for p in group["params"]])

    @property
    def curvature_due(self) -> bool:
        """Whether the coming step refreshes the curvature estimate (the same on every micro-batch of its window)."""
        return self.param_groups[0].get("step", 0) % self.update_period == 0

    def add_sampled_loss(self, sampled: SampledLoss, scale: float = 1.0) -> None:
        """Add one micro-batch's loss term at sampled targets to the coming step's estimate (see
        ``GaussNewtonBartlett.add``; ``scale``: the fp16 gradient scaler's)."""
        self.curvature.add(sampled, scale)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None,
             hessian: list[torch.Tensor] | None = None) -> float | None:
        loss = None
        if closure is not None:  # the last micro-batch's forward and backward: it adds its sampled loss too
            with torch.enable_grad():
                loss = closure()
        if hessian is None and self.curvature_due:
            hessian = self._estimate()
        super().step(hessian=hessian)
        for group in self.param_groups:  # the estimate lives on in the average: no copy of it in checkpoints
            for param in group["params"]:
                self.state[param].pop("hessian", None)
        return loss

    def _estimate(self) -> list[torch.Tensor]:
        """rho x the Gauss-Newton-Bartlett estimate; where every sample overflowed (fp16), the current average again,
        so that it stays as it is."""
        if self.curvature.offered == 0:
            raise RuntimeError("model.optimizer.name=sophia: this step refreshes Sophia's curvature estimate, but the "
                               "model offered no loss at sampled targets (SophiaG.add_sampled_loss); lit-lm's modules "
                               "do it in PretrainingModule.training_loss, which a training_step must return through.")
        estimate = self.curvature.estimate()
        if estimate is None:
            return [self.state[p]["hessian_moment"].clone() if "hessian_moment" in self.state[p]
                    else torch.zeros_like(p) for p in self.curvature.params]
        torch._foreach_mul_(estimate, self.rho)
        return estimate
