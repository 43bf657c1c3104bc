from types import SimpleNamespace

import pytest
import torch

from lit_lm.callbacks import BatchSizeRamp, ThroughputMFU, throughput
from lit_lm.callbacks.throughput import compute_dtype, count_tokens, measure_matmul_flops
from tests.callbacks.helpers import LinearOnTokens, quiet_trainer

SECONDS_PER_MICRO_BATCH, FLOPS_PER_MICRO_BATCH, PEAK = 0.5, 1e6, 4e6


class FakePerfClock:
    def __init__(self, monkeypatch):
        self.now = 0.0
        monkeypatch.setattr("lit_lm.callbacks.throughput.time", self)

    def perf_counter(self) -> float:
        return self.now


class Timed(LinearOnTokens):
    """Each micro-batch takes exactly 0.5 s on the fake clock and costs 1 MFLOP."""

    flops_per_batch = FLOPS_PER_MICRO_BATCH  # Lightning's convention for ThroughputMonitor

    def __init__(self, clock, **kwargs):
        super().__init__(**kwargs)
        self.clock = clock

    def training_step(self, batch, batch_idx):
        self.clock.now += SECONDS_PER_MICRO_BATCH
        return super().training_step(batch, batch_idx)


def test_rates_and_mfu_are_right_while_the_batch_size_grows(tmp_path, monkeypatch):
    clock = FakePerfClock(monkeypatch)
    model = Timed(clock)
    window = 4
    perf = ThroughputMFU(window=window, peak_flops=PEAK)
    trainer = quiet_trainer(tmp_path, max_steps=12, callbacks=[BatchSizeRamp(16, 0.5), perf])
    trainer.fit(model)
    steps = [[s for s in model.seen if s["step"] == i] for i in range(12)]
    assert len(steps[0]) == 1 and len(steps[-1]) == 8  # the effective batch grew from 2 to 16 sequences
    last = steps[-(window - 1):]  # a window of 4 updates spans the last 3 optimizer steps
    micro_batches = sum(len(step) for step in last)
    expected = sum(s["tokens"] for step in last for s in step) / (SECONDS_PER_MICRO_BATCH * micro_batches)
    metrics = trainer.callback_metrics
    assert float(metrics["perf/tokens_per_sec"]) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["perf/samples_per_sec"]) == pytest.approx(2 / SECONDS_PER_MICRO_BATCH, rel=1e-5)
    assert float(metrics["perf/mfu"]) == pytest.approx(FLOPS_PER_MICRO_BATCH / SECONDS_PER_MICRO_BATCH / PEAK)
    assert float(metrics["train/tokens_seen"]) == perf.tokens_seen == sum(s["tokens"] for s in model.seen)


def test_validation_time_is_left_out_of_the_rates(tmp_path, monkeypatch):
    clock = FakePerfClock(monkeypatch)

    class WithSlowValidation(Timed):
        def validation_step(self, batch, batch_idx):
            self.clock.now += 100.0  # would crush the rate if it were counted

        def val_dataloader(self):
            return self.train_dataloader()

    model = WithSlowValidation(clock)
    perf = ThroughputMFU(window=3, peak_flops=PEAK)
    trainer = quiet_trainer(tmp_path, max_steps=8, val_check_interval=4, limit_val_batches=1,
                            num_sanity_val_steps=0, callbacks=[perf])
    trainer.fit(model)
    assert float(trainer.callback_metrics["perf/samples_per_sec"]) == pytest.approx(2 / SECONDS_PER_MICRO_BATCH)


def test_tokens_seen_is_saved_and_restored():
    perf = ThroughputMFU()
    perf.tokens_seen = 123_456_789_012
    restored = ThroughputMFU()
    restored.load_state_dict(perf.state_dict())
    assert restored.tokens_seen == 123_456_789_012


def test_tokens_are_the_attention_mask_or_every_id():
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])}
    assert int(count_tokens(batch)) == 5
    assert int(count_tokens({"input_ids": torch.ones(2, 4)})) == 8


def test_cpu_peak_is_measured_and_dtypes_follow_the_precision(monkeypatch):
    assert measure_matmul_flops(torch.device("cpu"), size=256, repeats=2) > 1e8
    # the peak is 2 n^3 FLOPs over the fastest multiply: with a clock whose multiplies take 4, 2, 1 and 3 seconds
    # (the first a warm-up), a 256 x 256 matmul's peak is 2 * 256^3 / 1
    ticks = iter([0.0, 4.0, 10.0, 12.0, 20.0, 21.0, 30.0, 33.0])
    monkeypatch.setattr(throughput, "matmul_size", lambda *args: 256)
    monkeypatch.setattr(throughput, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    assert measure_matmul_flops(torch.device("cpu"), size=256, repeats=3) == 2 * 256**3
    assert compute_dtype("bf16-mixed") == torch.bfloat16 and compute_dtype("16-mixed") == torch.float16
    assert compute_dtype("32-true") == torch.float32


def test_window_must_span_two_steps():
    with pytest.raises(ValueError, match="window"):
        ThroughputMFU(window=1)


def test_the_peak_is_measured_on_smaller_matrices_where_one_multiply_is_slow(monkeypatch):
    import lit_lm.callbacks.throughput as throughput

    clock = iter(range(0, 10_000, 1))  # every multiply "takes" one second
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: float(next(clock)))
    assert throughput.matmul_size(torch.device("cpu"), torch.float32, 1024, target_seconds=0.5) == 256
    monkeypatch.undo()
    assert throughput.matmul_size(torch.device("cpu"), torch.float32, 1024, target_seconds=1e9) == 1024
    assert throughput.matmul_size(torch.device("cpu"), torch.float32, 128, target_seconds=1e9) == 128


def test_measuring_the_peak_leaves_the_global_random_state_alone():
    import lit_lm.callbacks.throughput as throughput

    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    throughput.measure_matmul_flops(torch.device("cpu"), size=256, repeats=1)
    assert torch.equal(torch.random.get_rng_state(), before)  # else the masks would depend on the machine's speed
