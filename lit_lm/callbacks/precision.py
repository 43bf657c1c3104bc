"""``precision: auto``: the fastest mixed precision this hardware really has, resolved before the Trainer is built.

Lightning's own precision plugins do the work (``bf16-mixed``, ``16-mixed`` with a gradient scaler, ``32-true``);
this only chooses among them, because mixed precision is a speed trick only where the hardware computes in the
lower precision natively: on a CPU without AVX512-BF16 or AMX, bf16 autocast is several times *slower* than fp32.
"""

from pathlib import Path

import torch

AUTO = "auto"


def cpu_has_fast_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 natively (the AVX512-BF16 or AMX-BF16 instruction sets; Linux only)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_precision(accelerator: object = "auto") -> tuple[str, str]:
    """The precision ``auto`` stands for on this machine, and why.

    bf16-mixed on Ampere or newer GPUs and on CPUs with AVX512-BF16/AMX; 16-mixed (with loss scaling) on older GPUs;
    32-true otherwise.
    """
    if isinstance(accelerator, str):
        name = accelerator.lower()
    else:  # an Accelerator instance, or its class_path in a config
        name = str(getattr(accelerator, "class_path", None) or type(accelerator).__name__).lower()
    if name in ("auto", "gpu", "cuda") or "cuda" in name:
        if torch.cuda.is_available():
            device = torch.cuda.get_device_name()
            major, minor = torch.cuda.get_device_capability()
            if major >= 8:
                return "bf16-mixed", f"{device} (compute capability {major}.{minor}) computes in bf16 natively"
            return "16-mixed", f"{device} (compute capability {major}.{minor}) has no bf16; fp16 with loss scaling"
        if name != "auto":
            return "32-true", "no CUDA device is visible"
    if name in ("auto", "mps") and torch.backends.mps.is_available():
        return "32-true", "Apple MPS: no mixed precision known to be faster there"
    if name in ("auto", "cpu") or "cpu" in name:
        if cpu_has_fast_bf16():
            return "bf16-mixed", "this CPU has AVX512-BF16/AMX"
        return "32-true", "this CPU has neither AVX512-BF16 nor AMX, where bf16 is slower than fp32"
    return "32-true", f"no known fast mixed precision for accelerator {name!r}"
