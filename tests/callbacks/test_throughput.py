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
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long),
             "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])}
    assert int(count_tokens(batch)) == 5
    assert int(count_tokens({"input_ids": torch.ones(2, 4)})) == 8


def test_cpu_peak_is_measured_and_dtypes_follow_the_precision(monkeypatch):
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

    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    measure_matmul_flops(torch.device("cpu"), size=256, repeats=1)  # the real one (conftest fixes the callback's)
    assert torch.equal(torch.random.get_rng_state(), before)  # else the masks would depend on the machine's speed


# ---- the pieces: tokens of each batch form, where they are counted, the peak, the rates across devices ----
# pytest.approx's default relative 1e-6 below: the peaks and rates are float64 arithmetic on exact fake-clock times
# (error ~1e-15), far inside it.
def test_tokens_of_a_tuple_or_a_plain_tensor_batch_are_its_inputs_elements():
    assert int(count_tokens((torch.ones(2, 3), torch.zeros(7)))) == 6  # (inputs, labels): the inputs
    assert int(count_tokens([torch.ones(2, 4), torch.zeros(9)])) == 8
    assert int(count_tokens(torch.ones(4, 5))) == 20


def test_tokens_are_counted_on_the_batchs_device():
    """On a GPU the count stays there until the step's all-reduce. PyTorch's meta device stands in for it: a count
    made on the CPU would come back on the CPU."""
    ids = torch.ones(2, 4, device="meta")
    for batch in ({"input_ids": ids, "attention_mask": ids}, {"input_ids": ids}, (ids, ids), ids):
        assert count_tokens(batch).device.type == "meta"


def test_the_matrices_are_square_and_of_the_measured_dtype():
    a = throughput.random_matrix(4, torch.device("cpu"), torch.float64)
    assert a.shape == (4, 4) and a.dtype == torch.float64


def test_the_peak_is_measured_at_the_asked_dtype_and_device_with_the_default_time_target(monkeypatch):
    """measure_matmul_flops with its defaults, on a clock where every multiply takes 0.05 s: already above the
    0.02 s target at 256, so it measures 256 x 256 matrices, of the dtype and on the device asked for."""
    made, clock = [], iter(float(t) / 20 for t in range(10_000))  # each reading of the clock 0.05 s later
    real = throughput.random_matrix

    def recording(size, device, dtype, seed=0):
        made.append((size, device, dtype))
        return real(size, device, torch.float32, seed)  # a float32 matmul stands in for the one asked for

    monkeypatch.setattr(throughput, "random_matrix", recording)
    monkeypatch.setattr(throughput, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    cpu = torch.device("cpu")
    assert measure_matmul_flops(cpu, torch.bfloat16) == pytest.approx(2 * 256**3 / 0.05)
    assert made == [(256, cpu, torch.bfloat16)] * 3  # one to size, then the two measured


def test_the_defaults_the_recipes_run_with():
    """ThroughputMFU as the recipes list it (no arguments): rates over the last 5 optimizer steps, the peak looked
    up or measured."""
    perf = ThroughputMFU()
    assert (perf.window, perf.peak_flops, perf.tokens_seen) == (5, None, 0)
    perf.load_state_dict({})  # a checkpoint from before the callback was added
    assert perf.tokens_seen == 0


class TwoRanksStrategy:
    """Rank 0 of 2: the other rank's micro-batches hold ``other`` tokens in all; reduce records its calls."""

    def __init__(self, other: int) -> None:
        self.other, self.calls = other, []

    def reduce(self, tensor, reduce_op=None):
        self.calls.append((tensor.dtype, reduce_op))
        return tensor + self.other if reduce_op == "sum" else tensor


def test_tokens_and_samples_are_summed_over_devices_and_the_mfu_is_per_device(monkeypatch):
    """Two devices, a micro-batch of 2 rows each, 1 s per step on a fake clock, 1e6 FLOPs per micro-batch per device
    and a peak of 4e6 FLOP/s per device: 2e6 FLOP/s over 8e6 available, an MFU of 0.25 (the same as one device's)."""
    clock = FakePerfClock(monkeypatch)
    perf = ThroughputMFU(window=2, peak_flops=PEAK)
    strategy = TwoRanksStrategy(other=5)
    trainer = SimpleNamespace(world_size=2, global_step=0, strategy=strategy)
    logged = {}
    module = SimpleNamespace(log=lambda name, value: logged.__setitem__(name, value),
                             flops_per_batch=FLOPS_PER_MICRO_BATCH)
    perf.on_train_start(trainer, module)
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long),
             "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])}
    for step in (1, 2):
        perf.on_train_batch_start(trainer, module, batch, step - 1)
        clock.now += 1.0
        trainer.global_step = step
        perf.on_train_batch_end(trainer, module, None, batch, step - 1)
    assert strategy.calls == [(torch.int64, "sum")] * 2
    assert perf.tokens_seen == 2 * (5 + 5)  # 5 real tokens here and 5 on the other rank, each step
    assert logged["train/tokens_seen"].dtype == torch.float64 and float(logged["train/tokens_seen"]) == 20
    assert float(logged["perf/samples_per_sec"]) == pytest.approx(4.0)  # 2 rows a second on each of the 2 devices
    assert float(logged["perf/mfu"]) == pytest.approx(FLOPS_PER_MICRO_BATCH / PEAK)


def test_a_module_that_counts_its_own_flops_is_asked(monkeypatch):
    class Counting(Timed):
        flops_per_batch = None

        def training_flops(self, batch):
            return 1234.9

    perf = ThroughputMFU(peak_flops=PEAK)
    perf.on_train_batch_start(None, Counting(FakePerfClock(monkeypatch)), None, 0)
    assert perf.flops_per_batch == 1234


def test_without_a_known_peak_no_mfu_is_computed(monkeypatch):
    clock = FakePerfClock(monkeypatch)
    perf = ThroughputMFU(window=2)  # a GPU missing from Lightning's table leaves the peak unknown
    trainer = SimpleNamespace(world_size=1, global_step=0, strategy=TwoRanksStrategy(other=0))
    logged = {}
    module = SimpleNamespace(log=lambda name, value: logged.__setitem__(name, value), flops_per_batch=1e6)
    perf.on_train_start(trainer, module)
    for step in (1, 2, 3):
        perf.on_train_batch_start(trainer, module, {"input_ids": torch.ones(2, 4)}, step - 1)
        clock.now += 1.0
        trainer.global_step = step
        perf.on_train_batch_end(trainer, module, None, {"input_ids": torch.ones(2, 4)}, step - 1)
    assert "perf/mfu" not in logged and float(logged["perf/tokens_per_sec"]) == pytest.approx(8.0)


def setup_trainer(precision="32-true", device="cpu"):
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), precision=precision)


def test_the_peak_is_lightnings_table_else_a_cpu_measurement_in_the_run_dtype(monkeypatch, caplog):
    import logging

    table, measured = [], []
    def lookup(device, dtype):  # Lightning's table: a GPU's peak, nothing for a CPU
        table.append((device, dtype))
        return 3e12 if device.type == "cuda" else None

    def measure(device, dtype):
        measured.append((device, dtype))
        return 5e9

    monkeypatch.setattr(throughput, "get_available_flops", lookup)
    monkeypatch.setattr(throughput, "measure_matmul_flops", measure)
    with caplog.at_level(logging.INFO):
        cpu = ThroughputMFU()
        cpu.setup(setup_trainer("bf16-mixed"), None, "fit")
        gpu = ThroughputMFU()
        gpu.setup(setup_trainer("16-mixed", "cuda"), None, "fit")
        unknown = ThroughputMFU()
        unknown.setup(setup_trainer("32-true", "meta"), None, "fit")  # neither in the table nor a CPU
    assert (cpu.peak_flops, gpu.peak_flops, unknown.peak_flops) == (5e9, 3e12, None)
    assert table == [(torch.device("cpu"), torch.bfloat16), (torch.device("cuda"), torch.float16),
                     (torch.device("meta"), torch.float32)]
    assert measured == [(torch.device("cpu"), torch.bfloat16)]
    assert caplog.messages == ["ThroughputMFU: peak 0.005 TFLOP/s per device (a bfloat16 matmul measured on this CPU)",
                               "ThroughputMFU: peak 3.000 TFLOP/s per device (Lightning's table)",
                               "ThroughputMFU: no known peak for meta; perf/mfu is not logged"]
    given = ThroughputMFU(peak_flops=1e9)
    given.setup(setup_trainer(), None, "fit")
    later = ThroughputMFU()
    later.setup(setup_trainer(), None, "validate")  # only a fit looks the peak up
    assert (given.peak_flops, later.peak_flops, len(table)) == (1e9, None, 3)


def test_only_validation_inside_a_fit_is_left_out_of_the_rates(monkeypatch):
    """Each validation during a fit (not the sanity check, not a validate run) adds its time to the pause."""
    clock = FakePerfClock(monkeypatch)
    perf = ThroughputMFU()
    perf.on_train_start(SimpleNamespace(world_size=1, global_step=0), None)
    fit = SimpleNamespace(state=SimpleNamespace(fn="fit"), sanity_checking=False)
    for trainer in (SimpleNamespace(state=SimpleNamespace(fn="fit"), sanity_checking=True),
                    SimpleNamespace(state=SimpleNamespace(fn="validate"), sanity_checking=False), fit, fit):
        perf.on_validation_start(trainer, None)
        clock.now += 10.0
        perf.on_validation_end(trainer, None)
    assert perf._paused == 20.0
    perf.on_validation_end(fit, None)  # an end without a start adds nothing
    assert perf._paused == 20.0


def test_validation_between_the_steps_of_a_window_is_left_out(tmp_path, monkeypatch):
    """A validation after step 2 falls inside the window of steps 2 to 4 (window 3): the rate stays 2 rows per
    0.5 s, as in test_validation_time_is_left_out_of_the_rates, whose window closes before its validation."""
    clock = FakePerfClock(monkeypatch)

    class WithSlowValidation(Timed):
        def validation_step(self, batch, batch_idx):
            self.clock.now += 100.0

        def val_dataloader(self):
            return self.train_dataloader()

    perf = ThroughputMFU(window=3, peak_flops=PEAK)
    trainer = quiet_trainer(tmp_path, max_steps=4, val_check_interval=2, limit_val_batches=1,
                            num_sanity_val_steps=0, callbacks=[perf])
    trainer.fit(WithSlowValidation(clock))
    assert float(trainer.callback_metrics["perf/samples_per_sec"]) == pytest.approx(2 / SECONDS_PER_MICRO_BATCH)


def test_the_matrices_are_drawn_on_the_measured_device(monkeypatch):
    """A GPU's peak is measured on the GPU: its generator and its matrices are made there. torch records the device it
    is asked for (a CPU-only machine cannot make a CUDA tensor, so each call is answered on the CPU)."""
    asked, generator, randn = [], torch.Generator, torch.randn

    def recording_generator(device=None):
        asked.append(("generator", torch.device(device)))
        return generator()

    def recording_randn(*size, device=None, generator=None):
        asked.append(("randn", torch.device(device) if device is not None else None))
        return randn(*size, generator=generator)

    monkeypatch.setattr(torch, "Generator", recording_generator)
    monkeypatch.setattr(torch, "randn", recording_randn)
    throughput.random_matrix(4, torch.device("cuda"), torch.float32)
    assert asked == [("generator", torch.device("cuda")), ("randn", torch.device("cuda"))]


@pytest.mark.parametrize("seconds, expected", [(0.001, 1024), (0.25, 256)], ids=["fast", "exactly-the-target"])
def test_the_size_doubles_while_a_multiply_takes_under_the_target(monkeypatch, seconds, expected):
    """On a clock that reads 1000 s and more (as a real one does), a multiply of 0.001 s stays under the 0.25 s target
    all the way to the largest size; one of exactly 0.25 s (exact in binary) is no longer under it."""
    readings = iter(1000.0 + seconds * k for k in range(100))
    monkeypatch.setattr(throughput, "time", SimpleNamespace(perf_counter=lambda: next(readings)))
    assert throughput.matmul_size(torch.device("cpu"), torch.float32, 1024, target_seconds=0.25) == expected


def test_a_step_is_reported_once_its_window_is_done(tmp_path):
    """With a fixed accumulation of 2, the first micro-batch ends no optimizer step: nothing is reported for it, so
    after one step the 2-step window holds one update and no rate is logged yet."""
    perf = ThroughputMFU(window=2, peak_flops=PEAK)
    trainer = quiet_trainer(tmp_path, max_steps=1, accumulate_grad_batches=2, callbacks=[perf])
    model = LinearOnTokens()
    trainer.fit(model)
    assert len(model.seen) == 2 and perf.tokens_seen == sum(s["tokens"] for s in model.seen)
    assert "perf/samples_per_sec" not in trainer.callback_metrics


def test_a_validation_end_without_a_fit_is_harmless():
    """trainer.validate() alone: no training started, so nothing was paused and nothing is added."""
    ThroughputMFU().on_validation_end(SimpleNamespace(), None)
