"""Optimizers over decay parameter groups: AdamW (the default), other torch optimizers, and ones from the
``pytorch-optimizer`` package (the optional ``optimizers`` extra, imported only when chosen)."""

from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import nn

NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm, nn.RMSNorm)


def decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only; none on biases, norms or embeddings (tied ones too)."""
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, NO_DECAY_MODULES) or getattr(module, "no_weight_decay", False):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, other, seen = [], [], set()
    for name, param in model.named_parameters():  # named_parameters() yields a tied parameter once
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (other if id(param) in no_decay or name.endswith("bias") or param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


OptimizerName = Literal["adamw", "adafactor", "radam", "nadam", "muon", "lamb", "lion", "shampoo", "soap", "sophia"]
# the settings beside lr and weight_decay that each optimizer takes (muon: betas, eps and fused go to its AdamW part)
TAKES = {"adamw": ("betas", "eps", "fused"), "adafactor": (), "radam": ("betas", "eps"), "nadam": ("betas", "eps"),
         "muon": ("betas", "eps", "fused"), "lamb": ("betas", "eps"), "lion": ("betas",), "shampoo": ("betas",),
         "soap": ("betas", "eps"), "sophia": ("betas", "eps", "rho", "hessian_update_period")}
FROM_PYTORCH_OPTIMIZER = ("lamb", "lion", "shampoo", "soap", "sophia")
EXTRA_HINT = "pip install 'lit-lm[optimizers]' (or pip install pytorch-optimizer)"


@dataclass
class OptimizerConfig:
    """The optimizer and its settings; the learning-rate schedule is a callback that scales every group's ``lr``.
    Weight decay falls on weight matrices only (``decay_param_groups``) whichever optimizer runs."""

    name: OptimizerName = "adamw"
    """adamw (Loshchilov & Hutter 2019); from torch: adafactor (Shazeer & Stern 2018), radam (Liu et al. 2020),
    nadam (Dozat 2016), muon (Jordan et al. 2024: the hidden layers' weight matrices; AdamW for the rest); from the
    ``optimizers`` extra (pytorch-optimizer): lamb (You et al. 2020), lion (Chen et al. 2023), shampoo (Anil et al.
    2020's scalable Shampoo), soap (Vyas et al. 2024), sophia (Liu et al. 2023: Sophia-G, pytorch-optimizer's
    SophiaH step on the Gauss-Newton-Bartlett curvature estimate, one more backward every hessian_update_period
    steps; lr bounds each coordinate's step, as Lion's)."""
    lr: float = 1e-3
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.98)
    """Adam's beta1 and beta2 (and the momentum betas of radam, nadam, lamb, lion, shampoo and soap; muon's AdamW
    part). adafactor takes none: leave the default."""
    eps: float = 1e-6
    """Adam's epsilon (radam, nadam, lamb, soap, muon's AdamW part); sophia's floor under the curvature estimate;
    adafactor, lion and shampoo take none."""
    weight_decay: float = 0.01
    """Decoupled weight decay on weight matrices (not on biases, norms or embeddings)."""
    fused: bool | None = None
    """torch's fused AdamW kernel (one kernel for every parameter; ~5x faster steps than the default on this project's
    CPU), for adamw and muon's AdamW part. None uses it wherever torch has it for the parameters' device and the
    trainer allows it. The other optimizers use torch's foreach kernels where torch has them (on GPUs)."""
    rho: float = 0.04
    """sophia: the scale of the curvature estimate in its step ``lr * clip(m / max(rho * h, eps), 1)``; smaller
    clips fewer coordinates (Liu et al. 2023: 0.03 to 0.05)."""
    hessian_update_period: int = 10
    """sophia: optimizer steps per curvature estimate (the paper's k; each costs one more backward)."""

    def __post_init__(self) -> None:
        if self.name not in TAKES:
            raise ValueError(f"model.optimizer.name must be one of {', '.join(TAKES)}; got {self.name!r}.")
        if self.lr <= 0:
            raise ValueError(f"model.optimizer.lr must be positive, got {self.lr}.")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"model.optimizer.betas must lie in [0, 1), got {self.betas}.")
        if self.weight_decay < 0 or self.eps <= 0:
            raise ValueError("model.optimizer.weight_decay must be >= 0 and model.optimizer.eps > 0.")
        if self.rho <= 0 or self.hessian_update_period < 1:
            raise ValueError(f"model.optimizer.rho must be positive and model.optimizer.hessian_update_period at "
                             f"least 1; got {self.rho} and {self.hessian_update_period}.")
        defaults = {field.name: field.default for field in fields(self)}
        changed = [key for key in ("betas", "eps", "fused", "rho", "hessian_update_period")
                   if key not in TAKES[self.name]
                   and (tuple(self.betas) if key == "betas" else getattr(self, key)) != defaults[key]]
        if changed:
            raise ValueError(f"model.optimizer.name={self.name} takes no {' or '.join(changed)}: leave "
                             f"model.optimizer.{changed[0]} at its default ({defaults[changed[0]]}).")

    def build(self, model: nn.Module, fused_allowed: bool = True) -> torch.optim.Optimizer:
        """The optimizer over ``model``'s decay groups; AdamW fused where available unless ``fused`` or
        ``fused_allowed`` say no."""
        groups = decay_param_groups(model, self.weight_decay)
        betas = tuple(self.betas)
        if self.name == "adamw":  # Loshchilov & Hutter 2019, "Decoupled weight decay regularization"
            return self._adamw(groups, fused_allowed)
        if self.name == "muon":  # Jordan et al. 2024, "Muon: an optimizer for hidden layers"
            return self._muon(model, groups, fused_allowed)
        if self.name == "adafactor":  # Shazeer & Stern 2018, "Adafactor: adaptive learning rates with sublinear memory"
            # torch's takes no relative-step switch: lr caps the relative step min(lr, 1/sqrt(step)), so the schedule
            # acts on it
            return _torch_optimizer("Adafactor", "2.5")(groups, lr=self.lr)
        if self.name == "radam":  # Liu et al. 2020, "On the variance of the adaptive learning rate and beyond"
            return torch.optim.RAdam(groups, lr=self.lr, betas=betas, eps=self.eps, decoupled_weight_decay=True)
        if self.name == "nadam":  # Dozat 2016, "Incorporating Nesterov momentum into Adam"
            return torch.optim.NAdam(groups, lr=self.lr, betas=betas, eps=self.eps, decoupled_weight_decay=True)
        package = _pytorch_optimizer(self.name)
        if self.name == "lamb":  # You et al. 2020, "Large batch optimization for deep learning" (BERT in 76 minutes)
            return package.Lamb(groups, lr=self.lr, betas=betas, eps=self.eps)
        if self.name == "lion":  # Chen et al. 2023, "Symbolic discovery of optimization algorithms"
            return package.Lion(groups, lr=self.lr, betas=betas)
        if self.name == "shampoo":  # Anil et al. 2020, "Scalable second order optimization for deep learning"
            # Adam-like step sizes (RMSprop grafting) before and between the preconditioner's updates
            return package.ScalableShampoo(groups, lr=self.lr, betas=betas, decoupled_weight_decay=True,
                                           graft_type=3, preconditioning_compute_steps=20)  # 3: RMSPROP
        if self.name == "soap":  # Vyas et al. 2024, "SOAP: improving and stabilizing Shampoo using Adam"
            return package.SOAP(groups, lr=self.lr, betas=betas, eps=self.eps)
        # sophia: Liu et al. 2023, "Sophia: a scalable stochastic second-order optimizer for language model
        # pre-training"; its Gauss-Newton-Bartlett estimate comes from the module (lit_lm/modules/sophia.py)
        from lit_lm.modules.sophia import SophiaG

        return SophiaG(groups, lr=self.lr, betas=betas, rho=self.rho, update_period=self.hessian_update_period,
                       eps=self.eps)

    def _adamw_settings(self) -> dict:
        return dict(lr=self.lr, betas=tuple(self.betas), eps=self.eps)

    def _use_fused(self, fused_allowed: bool) -> bool:
        return not (self.fused is False or (self.fused is None and not fused_allowed))

    def _adamw(self, groups: list[dict], fused_allowed: bool) -> torch.optim.AdamW:
        settings = self._adamw_settings()
        if not self._use_fused(fused_allowed):
            return torch.optim.AdamW(groups, **settings)
        try:
            return torch.optim.AdamW(groups, **settings, fused=True)
        except RuntimeError as error:  # torch has no fused kernel for these parameters' device or dtype
            if self.fused:
                raise ValueError(f"model.optimizer.fused is true, but {error} Set it to null or false.") from None
            return torch.optim.AdamW(groups, **settings)

    def _muon(self, model: nn.Module, groups: list[dict], fused_allowed: bool) -> torch.optim.Optimizer:
        """Muon over the decayed weight matrices of the transformer blocks; AdamW over the embeddings, the heads,
        biases and norms (Jordan et al. 2024's advice)."""
        from lit_lm.modules.muon_adamw import MuonAdamW

        _torch_optimizer("Muon", "2.9")
        decay, other = groups
        blocks = {id(p) for name, p in model.named_parameters() if ".blocks." in f".{name}"}
        hidden = [p for p in decay["params"] if p.ndim == 2 and id(p) in blocks]
        rest = [p for p in decay["params"] if id(p) not in {id(q) for q in hidden}]
        muon_groups = [{"params": hidden, "weight_decay": decay["weight_decay"]}]
        adamw_groups = [{"params": rest, "weight_decay": decay["weight_decay"]}, other]
        adamw = self._adamw_settings()
        if self._use_fused(fused_allowed):
            try:
                return MuonAdamW(muon_groups, adamw_groups, dict(lr=self.lr), {**adamw, "fused": True})
            except RuntimeError as error:
                if self.fused:
                    raise ValueError(f"model.optimizer.fused is true, but {error} Set it to null or false.") from None
        return MuonAdamW(muon_groups, adamw_groups, dict(lr=self.lr), adamw)


def _torch_optimizer(name: str, version: str) -> type[torch.optim.Optimizer]:
    """``torch.optim.<name>``, or one clear error naming the torch that has it."""
    if not hasattr(torch.optim, name):
        raise ImportError(f"model.optimizer.name={name.lower()} needs torch.optim.{name} (torch {version} or newer); "
                          f"this is torch {torch.__version__}.")
    return getattr(torch.optim, name)


def _pytorch_optimizer(name: str):
    """The ``pytorch_optimizer`` package, or one clear error naming the extra that installs it."""
    try:
        import pytorch_optimizer
    except ImportError:
        raise ImportError(f"model.optimizer.name={name} needs the pytorch-optimizer package (the 'optimizers' extra): "
                          f"{EXTRA_HINT}.") from None
    return pytorch_optimizer
