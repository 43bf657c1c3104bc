"""What every lit-lm model returns."""

from dataclasses import dataclass

import torch


@dataclass
class LMOutput:
    """Model output. ``loss`` is None without labels.

    Without labels, ``logits`` is ``[batch, seq, vocab]``. With labels and sparse prediction it is
    ``[n, vocab]`` for the ``n`` positions whose label is not -100, in row-major order, and ``labels``
    holds their targets, so ``logits.argmax(-1) == labels`` is the prediction accuracy either way.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
