"""``precision: auto`` on every kind of machine (the hardware faked both ways, never the host's), and the mixed
precision plugin that clips gradients beside the fused AdamW, in real Trainer steps."""

import logging
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from lit_lm import precision
from lit_lm.cli import Trainer, main
from lit_lm.models import TransformerConfig
from lit_lm.modules import MaskedLMModule
from lit_lm.precision import MixedPrecision, auto_precision, bf16_speedup, cpu_has_fast_bf16
from tests.conftest import ROOT, fake_cpu
from tests.precision_probe import PrecisionProbe, joining


def cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 {flags}\n")
    return path


def test_bf16_units_are_read_from_the_cpu_flags(tmp_path):
    assert not cpu_has_fast_bf16(cpuinfo(tmp_path, "avx512f avx512bw"))
    assert cpu_has_fast_bf16(cpuinfo(tmp_path, "avx512f avx512_bf16"))
    assert cpu_has_fast_bf16(cpuinfo(tmp_path, "amx_tile amx_bf16"))
    assert not cpu_has_fast_bf16(tmp_path / "missing")


class FakeClock:
    """``time.perf_counter`` for ``bf16_speedup``: each timed interval (a call that starts it, the next that ends it)
    lasts the next of the durations given for the precision in force when it started: CPU autocast to bf16, or none
    (fp32). So a matmul timed under the wrong precision draws the other list, and nothing depends on this machine."""

    def __init__(self, fp32: list[float], bf16: list[float]) -> None:
        self.durations = {False: list(fp32), True: list(bf16)}
        self.now, self.started = 0.0, None

    def perf_counter(self) -> float:
        if self.started is None:
            self.started = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        else:
            left = self.durations[self.started]
            assert left, f"more {'bf16' if self.started else 'fp32'} matmuls timed than the probe should time"
            self.now += left.pop(0)
            self.started = None
        return self.now


@pytest.mark.parametrize("fp32, bf16", [
    ([0.125, 4.0, 3.0, 5.0], [0.03125, 2.0, 1.5, 1.75]),  # bf16 2x faster; the warm-up calls fastest: left out
    ([6.0, 1.0, 0.75, 1.25], [9.0, 8.0, 12.0, 16.0]),  # bf16 emulated: 0.09375x; the warm-up calls slowest
], ids=["bf16-units", "bf16-emulated"])
def test_the_probe_divides_the_best_fp32_time_by_the_best_bf16_time(monkeypatch, fp32, bf16):
    """The ratio of the best of ``repeats`` timed matmuls of each precision, after a warm-up call each; the durations
    are binary fractions, so the expected ratio is exact."""
    clock = FakeClock(fp32, bf16)
    monkeypatch.setattr(precision, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    assert bf16_speedup(8, 4, 8, repeats=3) == min(fp32[1:]) / min(bf16[1:])
    assert clock.durations == {False: [], True: []} and clock.started is None  # each timing drawn, each interval closed


@pytest.mark.parametrize("fast_bf16, expected", [(False, "32-true"), (True, "bf16-mixed")])
def test_auto_on_a_cpu_follows_the_measured_speed(monkeypatch, fast_bf16, expected):
    fake_cpu(monkeypatch, fast_bf16)
    chosen, reason = auto_precision("auto", (128, 64, 256))
    assert chosen == expected
    assert ("2.40x" if fast_bf16 else "0.20x") in reason and "128x64x256" in reason  # what it measured
    assert auto_precision("cpu")[0] == expected


def test_a_cpu_whose_flags_promise_bf16_but_whose_probe_is_slow_gets_fp32(monkeypatch):
    fake_cpu(monkeypatch, True)
    monkeypatch.setattr(precision, "bf16_speedup", lambda *shape: 1.05)  # evidence beats the flags
    assert auto_precision("cpu")[0] == "32-true"


@pytest.mark.parametrize("capability, expected", [((7, 0), "16-mixed"), ((7, 5), "16-mixed"), ((8, 0), "bf16-mixed"),
                                                   ((9, 0), "bf16-mixed")])
def test_auto_on_a_gpu(monkeypatch, capability, expected):
    fake_cpu(monkeypatch, False)
    monkeypatch.setattr(precision, "_cuda_capability", lambda: ("Some GPU", capability))
    chosen, reason = auto_precision("gpu")
    assert chosen == expected and "Some GPU" in reason
    assert auto_precision("auto")[0] == expected
    assert auto_precision("cpu")[0] == "32-true"  # a GPU in the machine does not matter to a CPU run


TINY = ["--model.init_args.config.hidden_size", "32", "--model.init_args.config.num_layers", "1",
        "--model.init_args.config.num_heads", "2", "--model.init_args.config.intermediate_size", "64",
        "--data.init_args.tokenizer.vocab_size", "300", "--data.init_args.seq_length", "32",
        "--data.init_args.batch_size", "8", "--data.init_args.split", "paragraph",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "3", "--trainer.max_steps", "3"]


@pytest.mark.slow
@pytest.mark.parametrize("machine, expected", [
    ("cpu without bf16", "32-true"), ("cpu with bf16", "bf16-mixed"),
    ("gpu 7.5", "16-mixed"), ("gpu 8.0", "bf16-mixed"),
])
def test_auto_through_the_cli_chooses_saves_and_trains(machine, expected, corpus, tmp_path, monkeypatch, caplog):
    """The crammed recipe with precision auto, on faked hardware: the choice is printed, recorded in config.yaml and
    trained with (a faked GPU's choice runs on this CPU, as Lightning finds no CUDA device): the probe checks from
    inside the fit that it computed in the chosen precision."""
    fake_cpu(monkeypatch, machine == "cpu with bf16")
    if machine.startswith("gpu"):
        major, minor = map(int, machine.split()[1].split("."))
        monkeypatch.setattr(precision, "_cuda_capability", lambda: ("Fake GPU", (major, minor)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    caplog.set_level(logging.INFO)
    probe = PrecisionProbe()
    with joining(probe):
        cli = main(["fit", "--config", str(ROOT / "configs" / "recipes" / "crammed-bert.yaml"), *TINY,
                    "--data.init_args.paths", f"[{corpus}]"])
    assert f"precision: auto -> {expected}" in caplog.text
    assert cli.trainer.precision == expected
    probe.check(cli.trainer, expected)
    saved = yaml.safe_load(next(tmp_path.glob("runs/crammed-bert/logs/version_0/config.yaml")).read_text())
    assert saved["trainer"]["precision"] == expected  # the saved config records what ran
    assert cli.trainer.global_step == 3
    assert cli.trainer.optimizers[0].defaults["fused"]  # beside gradient clipping, in every precision


def test_the_trainer_takes_auto_from_python(monkeypatch):
    fake_cpu(monkeypatch, True)
    trainer = Trainer(precision="auto", accelerator="cpu", logger=False, enable_checkpointing=False)
    assert trainer.precision == "bf16-mixed" and isinstance(trainer.precision_plugin, MixedPrecision)


class RecordGradNorm(Callback):
    """The total gradient norm each optimizer step used (after unscaling and clipping): read before the gradients
    are zeroed, which the step leaves as they were."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_zero_grad(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def tiny_module() -> MaskedLMModule:
    config = TransformerConfig(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                               max_position_embeddings=32, norm_placement="pre", final_norm=True)
    return MaskedLMModule(config, special_token_ids=[0, 1, 2, 3, 4], mask_token_id=4, seq_length=32)


@pytest.mark.slow
@pytest.mark.parametrize("precision_name", ["bf16-mixed", "16-mixed"])
def test_clipping_and_the_fused_adamw_together_under_mixed_precision(precision_name, tmp_path):
    """Lightning's own plugin refuses this combination (for bf16 too); ours clips the unscaled gradients and keeps
    the fused kernel. 16-mixed runs as fp16 with a loss scale on this CPU, as on a GPU without bf16."""
    torch.manual_seed(0)
    ids = torch.randint(5, 300, (24, 32), generator=torch.Generator().manual_seed(0))
    data = DataLoader([{"input_ids": row, "attention_mask": torch.ones_like(row)} for row in ids], batch_size=4)
    module, record = tiny_module(), RecordGradNorm()
    before = [p.detach().clone() for p in module.parameters()]
    trainer = Trainer(accelerator="cpu", precision=precision_name, gradient_clip_val=0.05, max_steps=4,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[record], default_root_dir=tmp_path)
    trainer.fit(module, data)
    assert trainer.precision == precision_name and isinstance(trainer.precision_plugin, MixedPrecision)
    assert trainer.optimizers[0].defaults["fused"]
    assert (trainer.precision_plugin.scaler is not None) == (precision_name == "16-mixed")
    stepped = [norm for norm in record.norms if torch.isfinite(torch.tensor(norm))]
    assert stepped and all(norm <= 0.05 * 1.01 for norm in stepped)  # unscaled, then clipped to the limit
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))  # and the weights moved
