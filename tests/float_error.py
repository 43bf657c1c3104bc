"""How far two float32 computations of the same quantity may sit apart from float error alone, so that a tolerance
follows from an argument, not from what passed once on one CPU. AVX2 and AVX512 machines (and each thread count)
sum in other orders; both stay inside these bounds."""

import numpy as np
import torch

UNIT_ROUNDOFF = 2.0**-24
"""float32's unit round-off u: one rounding moves a value by at most u times its size."""

SUMS_PER_LAYER = 8
"""The sums of products one transformer layer computes one after another: Q/K/V, the scores, their weighted sum,
the output projection, two feed-forward matmuls, and the two normalizations' means (8 in all, rounded up)."""


def reordered_tolerance(reference: torch.Tensor, inner: int, layers: int) -> dict[str, float]:
    """``atol`` (and ``rtol=0``) for ``torch.testing.assert_close`` between two float32 forwards of one network that
    sum in different orders: a KV cache against the full forward, a padded batch against one row, a permutation.

    A sum of K products computed in another order moves by at most K·u·Σ|terms| (Higham, gamma_K). The test models
    normalize every layer, so their activations stay of order 1, and each of a layer's SUMS_PER_LAYER sums moves its
    result by at most ``inner``·u, ``inner`` the widest sum (the hidden or feed-forward width, or the sequence
    length in attention's weighted sum). Layers add their errors, and the output head scales them with the logits:
    |difference| <= SUMS_PER_LAYER · layers · inner · u · max(1, max|reference|). A real mistake (a stale cache entry,
    a leaked padding position, a wrong position) moves logits by 1e-2 or more, far outside."""
    scale = max(1.0, reference.detach().abs().max().item())
    return {"atol": SUMS_PER_LAYER * layers * inner * UNIT_ROUNDOFF * scale, "rtol": 0.0}


def model_tolerance(model: torch.nn.Module, reference: torch.Tensor) -> dict[str, float]:
    """``reordered_tolerance`` for a lit-lm model's logits: its layers plus the head, its widest sum."""
    config = model.config
    inner = max(config.hidden_size, config.intermediate_size or 0, reference.shape[1] if reference.dim() > 2 else 1)
    return reordered_tolerance(reference, inner, config.num_layers + 1)


def accumulation_tolerance(*columns: np.ndarray) -> float:
    """How far a float32 statistic accumulated over mini-batches may sit from the whole set's, or from a float64
    reference.

    The metrics keep float32 sums of n values (x, y, x², xy, or counts): each sum carries a relative error of at most
    about n·u (recursive summation), whatever order the batches came in. A correlation (Pearson, and Spearman as
    Pearson of ranks) subtracts squared means from those sums, which magnifies the error by
    kappa = 1 + mean²/variance of its column; the ratio cov / sqrt(var·var) adds the errors of its three moments. So
    |difference| <= 4·n·u·kappa (4 for the three moments and the final division), with kappa from the data itself.
    A mean of such metrics, and a loss (a mean of n float32 values), sit inside the same bound."""
    n = max(len(c) for c in columns)
    kappa = max(1.0 + float(np.mean(c, dtype=np.float64) ** 2 / max(np.var(c, dtype=np.float64), 1e-30))
                for c in columns)
    return 4 * n * UNIT_ROUNDOFF * kappa
