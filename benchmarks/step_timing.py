"""What the training-throughput benchmarks share: their command-line options and alternately timed training steps."""

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def add_step_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", nargs="+", default=["256x4", "512x8"], help="hidden x layers")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--bf16-batch-size", type=int, default=2,
                        help="sequences per batch under bf16 autocast, which is several times slower on CPUs without "
                             "bf16 units (both models always share the batch)")
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (bf16: at least 2)")
    parser.add_argument("--warmup", type=int, default=1)


def tokens_per_second(models: dict[str, torch.nn.Module], train_step: Callable, tokens: int, steps: int,
                      warmup: int) -> dict[str, float]:
    """Median tokens/s of ``train_step(model, optimizer)`` per model, the models taking turns step by step."""
    # the same optimizer for every model: fused AdamW, several times faster than the per-tensor loop on CPU
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for name, m in models.items()}
    times = {name: [] for name in models}
    for step in range(warmup + steps):
        for name, model in models.items():  # interleaved: a busy machine slows every model alike
            start = time.perf_counter()
            train_step(model, optimizers[name])
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: tokens / statistics.median(t) for name, t in times.items()}
