"""Tokens seen (exactly), tokens per second and model FLOPs utilisation (MFU)."""

import time
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lit_lm.callbacks.batch_size import micro_batch_rows

COMPUTE_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16,
                  "16-true": torch.float16, "64-true": torch.float64}


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the matrix multiplies run in under a Lightning precision setting."""
    return COMPUTE_DTYPES.get(str(precision), torch.float32)


def measure_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024,
                         repeats: int = 5, target_seconds: float = 0.02) -> float:
    """Peak FLOP/s of this device, measured as the best of a few square matrix multiplies.

    Used where Lightning has no table entry (CPUs): MFU is then relative to what this machine's BLAS achieves on a
    large matmul, with the threads torch is set to use, not to a datasheet number. The matrices grow from 256 up to
    ``size`` only while one multiply takes under ``target_seconds``: a dtype the CPU has no fast kernel for (fp16 on
    most CPUs takes seconds for one 1024 x 1024 multiply) is measured in a fraction of a second, not half a minute.
    """
    size = matmul_size(device, dtype, size, target_seconds)
    a, b = random_matrix(size, device, dtype, seed=0), random_matrix(size, device, dtype, seed=1)
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def random_matrix(size: int, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """A random square matrix from a generator of its own: measuring never moves the run's random state (which
    draws the masks), however many sizes it tries."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(size, size, device=device, generator=generator).to(dtype)


def matmul_size(device: torch.device, dtype: torch.dtype, largest: int = 1024, target_seconds: float = 0.02) -> int:
    """The side of the square matmul to measure: doubled from 256 (or ``largest`` if smaller) while one multiply
    takes under ``target_seconds``, at most ``largest``."""
    size = min(256, largest)
    while size * 2 <= largest:
        a = random_matrix(size, device, dtype)
        start = time.perf_counter()
        (a @ a).sum().item()
        if time.perf_counter() - start >= target_seconds:
            break
        size *= 2
    return size


def count_tokens(batch: Any) -> torch.Tensor:
    """Real (non-padding) tokens in a batch: the sum of its attention mask, or every input id without one."""
    if isinstance(batch, dict):
        if batch.get("attention_mask") is not None:
            return batch["attention_mask"].sum()
        return torch.tensor(batch["input_ids"].numel(), device=batch["input_ids"].device)
    tensor = batch[0] if isinstance(batch, (list, tuple)) else batch
    return torch.tensor(tensor.numel(), device=tensor.device)


class ThroughputMFU(Callback):
    """Counts the tokens trained on, exactly, across all devices, and logs the rate and MFU at each optimizer step.

    Logs ``train/tokens_seen`` (non-padding tokens in every micro-batch whose gradients reached an optimizer step,
    summed over devices; saved in checkpoints, so it continues on resume), ``perf/tokens_per_sec`` (all devices),
    ``perf/samples_per_sec`` and ``perf/mfu`` (achieved FLOP/s over the devices' peak). Rates are averages over the
    last ``window`` optimizer steps and leave out time spent in validation. They are counted per micro-batch and
    reported per optimizer step, so they stay right while a batch-size ramp changes how many micro-batches a step takes.

    The FLOPs of a micro-batch come from the module's ``training_flops(batch)`` (forward and backward, counted by
    Lightning's ``measure_flops``), or from Lightning's ``flops_per_batch`` attribute convention. The peak is Lightning's
    table for the GPU and precision, or, on a CPU, a matrix multiply measured at start (``measure_matmul_flops``);
    ``peak_flops`` overrides both.

    Lightning's ``ThroughputMonitor`` computes the same rates, but only on rank 0, per micro-batch, under
    ``train/device/*`` names and without a CPU peak; this callback reuses its ``Throughput`` arithmetic.

    Args:
        window: Number of optimizer steps the rates are averaged over.
        peak_flops: Peak FLOP/s of one device; None looks it up (GPU) or measures it (CPU).
    """

    def __init__(self, window: int = 5, peak_flops: float | None = None) -> None:
        if window < 2:
            raise ValueError(f"ThroughputMFU.window must be >= 2 optimizer steps, got {window}.")
        self.window = window
        self.peak_flops = peak_flops
        self.tokens_seen = 0  # saved in checkpoints
        self.flops_per_batch: int | None = None
        self._pending_tokens: torch.Tensor | None = None
        self._pending_batches = 0
        self._throughput: Throughput | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.peak_flops is not None:
            return
        device, dtype = trainer.strategy.root_device, compute_dtype(trainer.precision)
        self.peak_flops = get_available_flops(device, dtype)
        source = "Lightning's table"
        if self.peak_flops is None and device.type == "cpu":
            self.peak_flops = measure_matmul_flops(device, dtype)
            source = f"a {str(dtype).removeprefix('torch.')} matmul measured on this CPU"
        if self.peak_flops:
            rank_zero_info(f"ThroughputMFU: peak {self.peak_flops / 1e12:.3f} TFLOP/s per device ({source})")
        else:
            rank_zero_info(f"ThroughputMFU: no known peak for {device}; perf/mfu is not logged")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        world = trainer.world_size
        self._throughput = Throughput(available_flops=self.peak_flops * world if self.peak_flops else None,
                                      world_size=1, window_size=self.window)  # all devices counted together
        self._start, self._paused, self._val_start = time.perf_counter(), 0.0, None
        self._batches = self._samples = self._tokens_this_run = 0
        self._pending_tokens, self._pending_batches = None, 0
        self._last_step = trainer.global_step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.flops_per_batch is None:
            if hasattr(pl_module, "training_flops"):
                self.flops_per_batch = int(pl_module.training_flops(batch))
            elif getattr(pl_module, "flops_per_batch", None):
                self.flops_per_batch = int(pl_module.flops_per_batch)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        tokens = count_tokens(batch)
        self._pending_tokens = tokens if self._pending_tokens is None else self._pending_tokens + tokens
        self._pending_batches += 1
        if trainer.global_step == self._last_step:
            return  # still accumulating: count now, report at the optimizer step
        self._last_step = trainer.global_step
        world = trainer.world_size
        # one small all-reduce per optimizer step, where gradients are all-reduced anyway
        tokens = int(trainer.strategy.reduce(self._pending_tokens.to(torch.int64), reduce_op="sum").item())
        batches = self._pending_batches * world
        self.tokens_seen += tokens
        self._tokens_this_run += tokens
        self._batches += batches
        self._samples += batches * micro_batch_rows(batch)
        self._pending_tokens, self._pending_batches = None, 0
        self._throughput.update(
            time=time.perf_counter() - self._start - self._paused, batches=self._batches, samples=self._samples,
            lengths=self._tokens_this_run, flops=None if self.flops_per_batch is None else self.flops_per_batch * batches,
        )
        pl_module.log("train/tokens_seen", torch.tensor(self.tokens_seen, dtype=torch.float64))  # float64: exact
        rates = self._throughput.compute()
        if "device/items_per_sec" in rates:
            pl_module.log("perf/tokens_per_sec", rates["device/items_per_sec"])
            pl_module.log("perf/samples_per_sec", rates["device/samples_per_sec"])
        if "device/mfu" in rates:
            pl_module.log("perf/mfu", rates["device/mfu"])

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(self, "_val_start", None) is not None:
            self._paused += time.perf_counter() - self._val_start
            self._val_start = None

    def state_dict(self) -> dict[str, Any]:
        return {"tokens_seen": self.tokens_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tokens_seen = int(state_dict.get("tokens_seen", 0))
