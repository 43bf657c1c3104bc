"""What every lit-lm model returns."""

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
"""The label of positions that nothing should be predicted for (cross-entropy's ``ignore_index``)."""


@dataclass
class LMOutput:
    """Model output. ``loss`` is None without labels.

    Without labels, ``logits`` is ``[batch, seq, vocab]``. With labels and sparse prediction it is ``[n, vocab]``
    for ``n`` selected positions in row-major order, and ``labels`` holds their targets: the labelled positions,
    then (with a fixed ``n``, see ``sparse_prediction_rate``) unused slots labelled ``IGNORE_INDEX`` (-100).
    Either way ``logits.argmax(-1) == labels`` where ``labels != -100`` is the prediction accuracy.

    ``loss`` is the language-modelling cross-entropy; train on ``loss + aux_loss`` when ``aux_loss`` is not None
    (the weighted load-balancing loss of mixture-of-experts layers).
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    """With ``output_attentions=True``: each block's attention weights, [batch, heads, seq, seq]."""
