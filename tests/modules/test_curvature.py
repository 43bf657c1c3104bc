"""The Gauss-Newton-Bartlett estimate: equal in expectation to the exact Gauss-Newton diagonal of each loss it
serves, summed over micro-batches and over ranks before squaring, overflowing samples dropped."""

import multiprocessing
import os
import socket

import pytest
import torch

from lit_lm.models.output import IGNORE_INDEX
from lit_lm.modules.curvature import (GaussNewtonBartlett, SampledLoss, sampled_binary_cross_entropy,
                                      sampled_cross_entropy, sampled_squared_error)

DRAWS = 3000


def mean_estimate(weight: torch.Tensor, sample) -> torch.Tensor:
    """The estimate averaged over DRAWS independent draws of the targets."""
    total = torch.zeros_like(weight)
    for _ in range(DRAWS):
        estimate = GaussNewtonBartlett([weight])
        estimate.add(sample())
        total += estimate.estimate()[0]
    return total / DRAWS


def test_cross_entropy_estimate_is_the_gauss_newton_diagonal_of_softmax_regression():
    """logits = x W: the Gauss-Newton diagonal of the mean cross-entropy over n rows is, for W[a, c],
    mean_i x[i, a]^2 p[i, c] (1 - p[i, c]); rows labelled -100 do not count."""
    torch.manual_seed(0)
    x, weight = torch.randn(6, 3), torch.randn(3, 4, requires_grad=True)
    labels = torch.tensor([1, 0, IGNORE_INDEX, 3, IGNORE_INDEX, 2])
    kept = labels != IGNORE_INDEX
    p = torch.softmax(x[kept] @ weight, -1).detach()
    exact = (x[kept, :, None] ** 2 * (p * (1 - p))[:, None, :]).mean(0)
    assert sampled_cross_entropy(x @ weight, labels).count == 4
    torch.testing.assert_close(mean_estimate(weight, lambda: sampled_cross_entropy(x @ weight, labels)), exact,
                               rtol=0.12, atol=1e-3)


def test_binary_estimate_is_weighted_as_the_loss():
    """logits = x w, mean binary cross-entropy over the masked-in tokens times 50 (ELECTRA's discriminator):
    50 mean_i x[i, a]^2 s_i (1 - s_i)."""
    torch.manual_seed(1)
    x, weight = torch.randn(5, 3), torch.randn(3, requires_grad=True)
    mask = torch.tensor([True, True, False, True, True])
    s = torch.sigmoid(x[mask] @ weight).detach()
    exact = 50 * (x[mask] ** 2 * (s * (1 - s))[:, None]).mean(0)
    torch.testing.assert_close(mean_estimate(weight, lambda: sampled_binary_cross_entropy(x @ weight, mask, "d", 50)),
                               exact, rtol=0.12, atol=1e-3)


def test_squared_error_estimate_is_twice_the_features_squared():
    """The mean-squared error of a linear score has the Gauss-Newton diagonal 2 mean_i x[i, a]^2 (its Hessian)."""
    torch.manual_seed(2)
    x, weight = torch.randn(8, 3), torch.randn(3, requires_grad=True)
    exact = 2 * (x ** 2).mean(0)
    torch.testing.assert_close(mean_estimate(weight, lambda: sampled_squared_error(x @ weight)), exact,
                               rtol=0.12, atol=1e-3)


def fixed_loss(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor, name: str = "lm") -> SampledLoss:
    """A loss at given (not sampled) targets, so that two ways of adding the same rows can be compared exactly."""
    return SampledLoss(name, ((x @ weight - y) ** 2).sum(), torch.tensor(len(x)), 1.0)


def test_micro_batches_are_summed_before_squaring():
    """Two micro-batches of one step give the estimate of their union, not the sum of two estimates."""
    torch.manual_seed(3)
    x, y, weight = torch.randn(10, 3), torch.randn(10), torch.randn(3, requires_grad=True)
    whole = GaussNewtonBartlett([weight])
    whole.add(fixed_loss(weight, x, y))
    split = GaussNewtonBartlett([weight])
    split.add(fixed_loss(weight, x[:4], y[:4]))
    split.add(fixed_loss(weight, x[4:], y[4:]))
    expected = torch.autograd.grad(((x @ weight - y) ** 2).sum(), weight)[0] ** 2 / 10
    torch.testing.assert_close(split.estimate()[0], expected)
    torch.testing.assert_close(whole.estimate()[0], expected)


def test_an_overflowing_sample_is_dropped_and_a_scaled_one_is_scaled_back():
    weight = torch.ones(3, requires_grad=True)
    estimate = GaussNewtonBartlett([weight])
    estimate.add(SampledLoss("lm", (weight * float("inf")).sum(), torch.tensor(5)))
    assert (estimate.offered, estimate.skipped) == (1, 1)
    assert estimate.estimate() is None  # nothing finite: no estimate, and a fresh start
    x, y = torch.randn(4, 3), torch.randn(4)
    estimate.add(fixed_loss(weight, x, y), scale=1024.0)
    reference = GaussNewtonBartlett([weight])
    reference.add(fixed_loss(weight, x, y))
    torch.testing.assert_close(estimate.estimate()[0], reference.estimate()[0])


def test_a_parameter_the_loss_does_not_reach_gets_zero():
    used, unused = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    estimate = GaussNewtonBartlett([used, unused])
    estimate.add(fixed_loss(used, torch.randn(4, 3), torch.randn(4)))
    result = estimate.estimate()
    assert result[0].abs().sum() > 0 and torch.equal(result[1], torch.zeros(2))


def _rank(rank: int, port: int, queue) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(4)
    x, y, weight = torch.randn(10, 3), torch.randn(10), torch.randn(3, requires_grad=True)
    rows = slice(0, 3) if rank == 0 else slice(3, 10)  # unequal shares: the counts must be summed too
    estimate = GaussNewtonBartlett([weight])
    estimate.add(fixed_loss(weight, x[rows], y[rows]))
    queue.put((rank, estimate.estimate()[0]))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ranks_sum_their_samples_before_squaring():
    """Under DDP each rank's estimate is the estimate of all ranks' rows together (the same on every rank)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("spawn")  # not fork: pytest-xdist's threads may hold locks
    queue = context.Queue()
    processes = [context.Process(target=_rank, args=(rank, port, queue)) for rank in range(2)]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    torch.manual_seed(4)
    x, y, weight = torch.randn(10, 3), torch.randn(10), torch.randn(3, requires_grad=True)
    single = GaussNewtonBartlett([weight])
    single.add(fixed_loss(weight, x, y))
    expected = single.estimate()[0]
    torch.testing.assert_close(results[0], expected)
    torch.testing.assert_close(results[1], expected)
