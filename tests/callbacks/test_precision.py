import pytest
import torch

from lit_lm.callbacks import precision
from lit_lm.callbacks.precision import auto_precision, cpu_has_fast_bf16
from lit_lm.cli import Trainer


def cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 {flags}\n")
    return path


def test_bf16_on_cpus_only_with_avx512_bf16_or_amx(tmp_path):
    assert not cpu_has_fast_bf16(cpuinfo(tmp_path, "avx512f avx512bw"))
    assert cpu_has_fast_bf16(cpuinfo(tmp_path, "avx512f avx512_bf16"))
    assert cpu_has_fast_bf16(cpuinfo(tmp_path, "amx_tile amx_bf16"))
    assert not cpu_has_fast_bf16(tmp_path / "missing")


@pytest.mark.parametrize("has_bf16, expected", [(False, "32-true"), (True, "bf16-mixed")])
def test_auto_on_a_cpu(monkeypatch, has_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: has_bf16)
    chosen, reason = auto_precision("auto")
    assert chosen == expected and ("AVX512-BF16" in reason)
    assert auto_precision("cpu")[0] == expected


@pytest.mark.parametrize("capability, expected", [((7, 0), "16-mixed"), ((7, 5), "16-mixed"), ((8, 0), "bf16-mixed"),
                                                   ((9, 0), "bf16-mixed")])
def test_auto_on_a_gpu(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some GPU")
    chosen, reason = auto_precision("gpu")
    assert chosen == expected and "Some GPU" in reason
    assert auto_precision("auto")[0] == expected
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert auto_precision("cpu")[0] == "32-true"  # a GPU in the machine does not matter to a CPU run


def test_this_machine_gets_fp32_and_the_trainer_takes_auto():
    if cpu_has_fast_bf16() or torch.cuda.is_available():
        pytest.skip("this machine has fast bf16")
    trainer = Trainer(precision="auto", accelerator="cpu", logger=False, enable_checkpointing=False)
    assert trainer.precision == "32-true"
