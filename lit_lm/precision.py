"""Mixed precision: which one ``precision: auto`` stands for on this machine, and Lightning's mixed-precision plugin
with gradient clipping that works beside a fused optimizer.

Lightning's own plugins do the arithmetic (autocast, and a gradient scaler under ``16-mixed``). ``auto`` only
chooses among ``32-true``, ``bf16-mixed`` and ``16-mixed``: mixed precision is a speed trick only where the hardware
computes in the lower precision natively, so on a CPU the choice is checked by timing a bf16 matmul against fp32.
"""

import time
from pathlib import Path

import torch
from lightning.pytorch.plugins.precision import MixedPrecision as LightningMixedPrecision
from lightning.pytorch.plugins.precision import Precision

AUTO = "auto"
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
MIN_BF16_SPEEDUP = 1.2  # below this, bf16's casts and rounding are not worth it
STRATEGIES_WITH_OWN_PRECISION = ("fsdp", "deepspeed")  # they bring their own precision plugins


def cpu_has_fast_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 natively (the AVX512-BF16 or AMX-BF16 instruction sets; Linux only)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_speedup(rows: int = 1024, hidden: int = 256, inner: int = 1024, repeats: int = 5) -> float:
    """How many times faster a ``[rows, hidden] @ [hidden, inner]`` matmul runs under CPU bf16 autocast than in
    fp32 (the shape of a transformer's feed-forward layer); the best of ``repeats`` timings of each."""
    a, b = torch.randn(rows, hidden), torch.randn(hidden, inner)

    def best_time(dtype: torch.dtype | None) -> float:
        times = []
        for _ in range(repeats + 1):  # the first call warms up the kernel
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                start = time.perf_counter()
                a @ b
                times.append(time.perf_counter() - start)
        return min(times[1:])

    return best_time(None) / best_time(torch.bfloat16)


def _cuda_capability() -> tuple[str, tuple[int, int]] | None:
    """The first CUDA device's name and compute capability, or None without one."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(), torch.cuda.get_device_capability()


def setting_name(accelerator: object) -> str:
    """``trainer.accelerator`` or ``trainer.strategy`` as a lower-case name: a string, an object or its class_path."""
    if isinstance(accelerator, str):
        return accelerator.lower()
    return str(getattr(accelerator, "class_path", None) or type(accelerator).__name__).lower()


def runs_on_cuda(accelerator: object) -> bool:
    name = setting_name(accelerator)
    return (name in ("auto", "gpu") or "cuda" in name) and torch.cuda.is_available()


def auto_precision(accelerator: object = "auto", matmul: tuple[int, int, int] = (1024, 256, 1024)) -> tuple[str, str]:
    """The precision ``auto`` stands for on this machine, and why.

    On a GPU, by compute capability: bf16-mixed from Ampere (8.0) on, 16-mixed with loss scaling before. On a CPU,
    bf16-mixed only where a ``matmul`` = (rows, hidden, inner) of the model's shape measured at least
    ``MIN_BF16_SPEEDUP`` times faster in bf16 than in fp32 (CPUs with AVX512-BF16 or AMX); 32-true otherwise.
    """
    name = setting_name(accelerator)
    if name in ("auto", "gpu", "cuda") or "cuda" in name:
        cuda = _cuda_capability()
        if cuda is not None:
            device, (major, minor) = cuda
            if major >= 8:
                return "bf16-mixed", f"{device} (compute capability {major}.{minor}) computes in bf16 natively"
            return "16-mixed", f"{device} (compute capability {major}.{minor}) has no bf16; fp16 with loss scaling"
        if name != "auto":
            return "32-true", "no CUDA device is visible"
    if name in ("auto", "mps") and torch.backends.mps.is_available():
        return "32-true", "Apple MPS: no mixed precision known to be faster there"
    if name in ("auto", "cpu") or "cpu" in name:
        flags = "AVX512-BF16/AMX" if cpu_has_fast_bf16() else "neither AVX512-BF16 nor AMX"
        speedup = bf16_speedup(*matmul)
        measured = f"this CPU has {flags}; a {'x'.join(map(str, matmul))} matmul ran {speedup:.2f}x fp32 in bf16"
        return ("bf16-mixed" if speedup >= MIN_BF16_SPEEDUP else "32-true"), measured
    return "32-true", f"no known fast mixed precision for accelerator {name!r}"


class MixedPrecision(LightningMixedPrecision):
    """Lightning's ``MixedPrecision`` whose gradient clipping also works beside a fused optimizer.

    Lightning refuses to clip for any optimizer that unscales fp16 gradients inside its own step (torch's fused
    AdamW), under ``bf16-mixed`` too, where nothing is scaled. Here gradients are always unscaled before clipping:
    bf16 has no scaler, and under ``16-mixed`` the scaler unscales a fused optimizer's gradients as it does any
    other's, and the fused step then only skips itself when they overflowed. So clipping and the fused AdamW run
    together under every precision.
    """

    def optimizer_step(self, optimizer, model, closure, **kwargs):
        if self.scaler is None or not getattr(optimizer, "_step_supports_amp_scaling", False):
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        closure_result = closure()
        skipped = closure_result is None and model.automatic_optimization  # backward was skipped
        if not skipped:
            self.scaler.unscale_(optimizer)
            optimizer.grad_scale = None  # already unscaled: the fused step must not divide again
        self._after_closure(model, optimizer)
        if skipped:
            return closure_result
        output = self.scaler.step(optimizer, **kwargs)  # skips the step when the gradients overflowed
        self.scaler.update()
        return output

    def clip_gradients(self, optimizer, clip_val=0.0, gradient_clip_algorithm=None) -> None:
        # the gradients are unscaled by now (see optimizer_step), so Lightning's refusal does not apply
        kwargs = {} if gradient_clip_algorithm is None else {"gradient_clip_algorithm": gradient_clip_algorithm}
        Precision.clip_gradients(self, optimizer, clip_val, **kwargs)


def precision_plugin(precision: object, accelerator: object = "auto", strategy: object = "auto",
                     plugins: object = None) -> MixedPrecision | None:
    """The plugin that runs ``precision`` for ``lit_lm.cli.Trainer``, or None to leave it to Lightning: for
    ``bf16-mixed`` and ``16-mixed``, unless another precision plugin is given or the strategy brings its own.

    ``16-mixed`` runs fp16 autocast with a gradient scaler on the CPU too (Lightning would switch to bf16 there):
    slow, but it is what a GPU without bf16 runs, so a CPU can test that path."""
    if precision not in ("bf16-mixed", "16-mixed"):
        return None
    given = plugins if isinstance(plugins, (list, tuple)) else [plugins] if plugins is not None else []
    if any(isinstance(plugin, Precision) for plugin in given):
        return None
    if any(name in setting_name(strategy) for name in STRATEGIES_WITH_OWN_PRECISION):
        return None
    name = setting_name(accelerator)
    if runs_on_cuda(accelerator):
        device = "cuda"
    elif name in ("auto", "mps") and torch.backends.mps.is_available():
        device = "mps"
    elif name in ("auto", "cpu") or "cpu" in name:
        device = "cpu"
    else:
        return None  # TPUs and others: Lightning knows best
    return MixedPrecision(precision, device)
