"""Muon for the hidden weight matrices, AdamW for everything else, as one optimizer.

Muon (Jordan et al. 2024) orthogonalises the momentum of a 2-D matrix, so it only takes matrices; its authors (and
Liu et al. 2025, "Muon is scalable") keep AdamW for the embeddings, the output head, biases and norm gains. One
optimizer object, not Lightning's several optimizers (which need manual optimization), so the trainer, gradient
clipping, the gradient scaler, checkpoints and the learning-rate callback (which scales every group's ``lr``) see one
optimizer whose ``param_groups`` are both parts' groups (the same dicts) and whose ``state`` both parts share.
"""

from collections.abc import Callable

import torch


class MuonAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` over ``muon_groups`` and ``torch.optim.AdamW`` over ``adamw_groups``, stepped together.

    Muon's ``adjust_lr_fn='match_rms_adamw'`` (Liu et al. 2025) scales its update to AdamW's size, so one ``lr``
    serves both parts."""

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], muon: dict, adamw: dict):
        muon_groups = [group for group in muon_groups if group["params"]]
        adamw_groups = [group for group in adamw_groups if group["params"]]
        self.muon = torch.optim.Muon(muon_groups, **muon, adjust_lr_fn="match_rms_adamw") if muon_groups else None
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw) if adamw_groups else None
        # the parts' own group dicts: a change to one (the learning-rate callback's) is a change to the part's
        super().__init__([group for part in self._parts() for group in part.param_groups], {})
        self._link()

    def _parts(self) -> list[torch.optim.Optimizer]:
        return [part for part in (self.muon, self.adamw) if part is not None]

    def _link(self) -> None:
        """Give the parts this optimizer's groups (new dicts after ``load_state_dict``) and its one state (keyed by
        parameter, so the parts never collide)."""
        start = 0
        for part in self._parts():
            part.param_groups = self.param_groups[start : start + len(part.param_groups)]
            start += len(part.param_groups)
            part.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self._parts():
            part.step()
        return loss
