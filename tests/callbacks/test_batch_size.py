import copy
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_lm.callbacks import BatchSizeRamp, OneCycleLR, ThroughputMFU
from lit_lm.callbacks.batch_size import micro_batch_rows
from tests.callbacks.helpers import LinearOnTokens, quiet_trainer
from tests.conftest import ROOT


def ramp(target=64, fraction=0.5, mode="linear", micro=8) -> BatchSizeRamp:
    r = BatchSizeRamp(target, fraction, mode)
    r.max_accumulation = target // micro
    return r


def test_linear_ramp_grows_one_micro_batch_at_a_time_and_reaches_the_target_at_the_ramp_fraction():
    r = ramp(target=64, fraction=0.5)  # 1 .. 8 micro-batches
    assert [r.target_accumulation(p) for p in (0.0, 0.25, 0.5, 0.75, 1.0)] == [1, 4, 8, 8, 8]
    path = [r.target_accumulation(i / 1000) for i in range(1001)]
    assert path == sorted(path) and set(path) == set(range(1, 9))


def test_stepped_ramp_doubles_at_equal_intervals():
    r = ramp(target=64, fraction=0.6, mode="stepped")
    path = [r.target_accumulation(i / 1000) for i in range(1001)]
    assert sorted(set(path)) == [1, 2, 4, 8] and path == sorted(path)
    assert r.target_accumulation(0.199) == 1 and r.target_accumulation(0.2) == 2
    assert r.target_accumulation(0.6) == 8


def test_a_new_factor_is_taken_only_where_lightning_windows_stay_aligned():
    assert BatchSizeRamp.aligned_accumulation(2, 4, 20) == 4
    assert BatchSizeRamp.aligned_accumulation(2, 4, 18) == 3
    assert BatchSizeRamp.aligned_accumulation(3, 5, 21) == 3  # neither 4 nor 5 divides 21: keep the factor
    assert BatchSizeRamp.aligned_accumulation(1, 7, 0) == 7  # at an epoch start anything goes


class GradientAtStep(Callback):
    """Keeps, at every optimizer step, the accumulated gradient and the weights it was computed at."""

    def __init__(self):
        self.steps = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append({"grad": pl_module.layer.weight.grad.clone(), "bias_grad": pl_module.layer.bias.grad.clone(),
                           "module": copy.deepcopy(pl_module.layer), "micro_batches": len(pl_module.seen)})


def test_ramp_accumulates_exact_windows_with_the_schedule_and_token_count_intact(tmp_path):
    model = LinearOnTokens(rows=2)
    grads, throughput = GradientAtStep(), ThroughputMFU(window=2, peak_flops=1e9)
    trainer = quiet_trainer(tmp_path, max_steps=16, callbacks=[
        BatchSizeRamp(target_batch_size=16, ramp_fraction=0.5), OneCycleLR(0.5, key="steps"), grads, throughput])
    trainer.fit(model)

    windows, start = [], 0
    for step in grads.steps:
        windows.append(model.seen[start:step["micro_batches"]])
        start = step["micro_batches"]
    assert len(windows) == 16 and start == len(model.seen)  # every micro-batch belongs to exactly one step
    sizes = [len(w) for w in windows]
    assert sizes[0] == 1 and sizes[-1] == 8 and sizes == sorted(sizes)  # grows from 1 to 8 micro-batches
    for step_index, (window, step) in enumerate(zip(windows, grads.steps)):
        assert {s["accumulation"] for s in window} == {len(window)}  # the factor never changes inside a window
        assert window[0]["batch_idx"] % len(window) == 0  # windows where Lightning's own arithmetic puts them
        expected_lr = 0.1 * OneCycleLR(0.5).factor(step_index / 16)  # progress in steps, whatever the batch size
        assert [s["lr"] for s in window] == pytest.approx([expected_lr] * len(window))
        # the gradient at the step is that of the window's mean loss: zeroed at its start, nothing leaked in
        layer = step["module"]
        layer.zero_grad()
        probe = LinearOnTokens()
        probe.layer = layer
        (sum(probe.loss(s["batch"]) for s in window) / len(window)).backward()
        torch.testing.assert_close(step["grad"], layer.weight.grad)
        torch.testing.assert_close(step["bias_grad"], layer.bias.grad)
    assert throughput.tokens_seen == sum(s["tokens"] for s in model.seen)  # exact, padding excluded
    assert throughput.tokens_seen < sum(s["batch"]["input_ids"].numel() for s in model.seen)


class StopAtStep(Callback):
    """Ends training once the optimizer step reaches ``step`` (a run whose max_steps only sets the schedule)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_the_factor_is_restored_on_resume(tmp_path):
    """A finished run continued with a larger max_steps: its progress drops (8/8 -> 8/100), so the schedule's target
    falls below the factor already reached. The factor never shrinks, so the resumed run keeps the checkpoint's
    factor; only a restored factor can show that (a factor restarted at 1 would follow the low target)."""
    checkpoints = tmp_path / "checkpoints"
    first = LinearOnTokens()
    quiet_trainer(tmp_path, max_steps=8, enable_checkpointing=True, callbacks=[
        BatchSizeRamp(16, 0.5, key="steps"), ModelCheckpoint(dirpath=checkpoints, save_last=True)]).fit(first)
    reached = first.seen[-1]["accumulation"]
    assert reached == 8  # the target (16 sequences / 2 rows), reached at half of the 8 steps
    second = LinearOnTokens()
    ramp = BatchSizeRamp(16, 0.5, key="steps")
    quiet_trainer(tmp_path, max_steps=100, enable_checkpointing=True, callbacks=[
        ramp, ModelCheckpoint(dirpath=checkpoints, save_last=True), StopAtStep(12)],
    ).fit(second, ckpt_path=str(checkpoints / "last.ckpt"))
    # what the schedule alone asks for over the resumed steps 8..12 of 100: at most 1 + floor(7 * 0.24) = 2
    assert max(ramp.target_accumulation(step / 100) for step in range(8, 13)) == 2 < reached
    assert second.seen[0]["step"] == 8 and second.seen[-1]["step"] == 11
    assert [s["accumulation"] for s in second.seen] == [reached] * (4 * reached)  # 4 steps at the restored factor


def test_ramp_refuses_a_fixed_accumulation_and_a_target_that_does_not_divide(tmp_path):
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        quiet_trainer(tmp_path, max_steps=2, accumulate_grad_batches=2,
                      callbacks=[BatchSizeRamp(16)]).fit(LinearOnTokens())
    with pytest.raises(ValueError, match=r"data.batch_size 2 .* set it to 16"):
        quiet_trainer(tmp_path, max_steps=2, callbacks=[BatchSizeRamp(15)]).fit(LinearOnTokens())


@pytest.mark.slow
def test_no_gradient_all_reduce_between_accumulation_steps_under_ddp(tmp_path):
    """Two CPU processes (gloo): gradients are all-reduced only at a window's last micro-batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on a small machine: one thread each
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "callbacks" / "ddp_accumulation_run.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    records = list(zip(ranks[0]["records"], ranks[1]["records"]))
    assert len(records) == len(ranks[0]["records"]) == len(ranks[1]["records"])
    factors = [a["accumulation"] for a, _ in records]
    assert factors == sorted(factors) and factors[0] == 1 and factors[-1] == 4  # 2 ranks x 2 rows x 4 = 16
    for i, (a, b) in enumerate(records):
        assert a["accumulation"] == b["accumulation"]  # both ranks take the same factor at the same batch
        last_of_window = i + 1 == len(records) or records[i + 1][0]["step"] != a["step"]
        assert a["sync"] == b["sync"] == last_of_window  # DDP's no_sync everywhere else
        if last_of_window:
            assert a["grad"] == pytest.approx(b["grad"], rel=1e-6)  # all-reduced: the same gradient on both
        else:
            assert a["grad"] != pytest.approx(b["grad"], rel=1e-3)  # only local gradients so far
    assert ranks[0]["tokens_seen"] == ranks[1]["tokens_seen"] == ranks[0]["local_tokens"] + ranks[1]["local_tokens"]


# ---- the pieces, on fake trainers: micro-batch sizes, the settings, the schedule's edges, what is logged ----
def test_micro_batch_rows_of_each_batch_form():
    assert micro_batch_rows({"input_ids": torch.zeros(3, 5)}) == 3
    assert micro_batch_rows((torch.zeros(3, 5), torch.zeros(7))) == 3  # (inputs, labels): the inputs' rows
    assert micro_batch_rows([torch.zeros(2, 4), torch.zeros(9)]) == 2
    assert micro_batch_rows(torch.zeros(4, 2)) == 4


@pytest.mark.parametrize("settings", [dict(target_batch_size=1), dict(target_batch_size=8, ramp_fraction=0.0),
                                      dict(target_batch_size=8, ramp_fraction=1.0),
                                      dict(target_batch_size=8, mode="stepped", key="time")])
def test_settings_at_their_bounds_are_allowed(settings):
    BatchSizeRamp(**settings)


@pytest.mark.parametrize("settings, message", [
    (dict(target_batch_size=0), r"BatchSizeRamp.target_batch_size must be >= 1, got 0"),
    (dict(ramp_fraction=1.5), r"BatchSizeRamp.ramp_fraction must be in \[0, 1\], got 1.5"),
    (dict(ramp_fraction=-0.1), r"BatchSizeRamp.ramp_fraction must be in \[0, 1\], got -0.1"),
    (dict(mode="cosine"), r"BatchSizeRamp.mode must be 'linear' or 'stepped', got 'cosine'"),
    (dict(key="epochs"), r"BatchSizeRamp.key must be 'auto', 'steps' or 'time', got 'epochs'"),
])
def test_settings_out_of_range_are_refused_naming_them(settings, message):
    with pytest.raises(ValueError, match=message):
        BatchSizeRamp(**{"target_batch_size": 8, **settings})


def test_the_ramp_fraction_at_its_bounds():
    """ramp_fraction 0: the target from the start; 1: the ramp takes the whole run (linear: 1 + floor(7 p))."""
    assert [ramp(target=64, fraction=0.0).target_accumulation(p) for p in (0.0, 0.5)] == [8, 8]
    assert [ramp(target=64, fraction=1.0).target_accumulation(p) for p in (0.0, 0.5, 0.99, 1.0)] == [1, 4, 7, 8]


def test_stepped_ramp_to_two_micro_batches_reaches_them():
    r = ramp(target=16, fraction=0.5, mode="stepped")  # 1, then 2 micro-batches: one doubling
    assert [r.target_accumulation(p) for p in (0.0, 0.49, 0.5, 1.0)] == [1, 1, 2, 2]


def test_a_factor_no_larger_one_divides_is_kept():
    assert BatchSizeRamp.aligned_accumulation(3, 5, 7) == 3  # neither 3, 4 nor 5 divides batch 7: keep the factor


def test_a_checkpoint_without_the_factor_restores_one():
    r = BatchSizeRamp(16)
    r.accumulation = 4
    r.load_state_dict({})
    assert r.accumulation == 1


def test_a_target_below_one_micro_batch_is_refused_with_the_nearest_that_works(tmp_path):
    with pytest.raises(ValueError, match=r"data.batch_size 2 x 1 device\(s\) = 2\); set it to 2\.$"):
        quiet_trainer(tmp_path, max_steps=2, callbacks=[BatchSizeRamp(1)]).fit(LinearOnTokens())


def test_a_run_without_a_limit_is_refused_before_training(tmp_path):
    model = LinearOnTokens()
    trainer = quiet_trainer(tmp_path, max_steps=-1, max_epochs=-1, callbacks=[BatchSizeRamp(16)])
    with pytest.raises(ValueError, match=r"BatchSizeRamp \(key='auto'\) needs a budget: set trainer.max_time"):
        trainer.fit(model)
    assert model.seen == []


class Strategy:
    handles_gradient_accumulation = False


class DeepSpeedStrategy(Strategy):  # stands for Lightning's (deepspeed is not installed)
    handles_gradient_accumulation = True


def test_a_module_or_strategy_that_rules_out_changing_the_accumulation_is_refused():
    manual = SimpleNamespace(automatic_optimization=False)
    trainer = SimpleNamespace(accumulate_grad_batches=1, strategy=Strategy())
    with pytest.raises(ValueError, match=r"BatchSizeRamp needs Lightning's automatic optimization \(the module turned "
                                         r"it off\)"):
        BatchSizeRamp(16).setup(trainer, manual, "fit")
    deepspeed = SimpleNamespace(accumulate_grad_batches=1, strategy=DeepSpeedStrategy())
    with pytest.raises(ValueError, match=r"BatchSizeRamp cannot change the accumulation of the DeepSpeedStrategy "
                                         r"strategy, which fixes it at start; use a fixed "
                                         r"trainer.accumulate_grad_batches instead"):
        BatchSizeRamp(16).setup(deepspeed, SimpleNamespace(automatic_optimization=True), "fit")
    BatchSizeRamp(16).setup(deepspeed, manual, "validate")  # only fitting is checked


def test_the_logged_batch_counts_sequences_across_devices():
    """train/batch_size = rows x micro-batches x devices: 2 rows on each of 2 devices, one micro-batch at the start
    (4 sequences), the target's 4 micro-batches at the end (16)."""
    logged = []
    module = SimpleNamespace(log=lambda name, value: logged.append((name, value)))
    r = BatchSizeRamp(16, ramp_fraction=0.5, key="steps")

    def trainer(step):
        return SimpleNamespace(accumulate_grad_batches=1, world_size=2, global_step=step, max_steps=10,
                               max_epochs=None, num_training_batches=float("inf"), callbacks=[],
                               fit_loop=SimpleNamespace(total_batch_idx=0))

    batch = {"input_ids": torch.zeros(2, 8)}
    r.on_train_batch_start(trainer(0), module, batch, 0)
    r.on_train_batch_start(trainer(10), module, batch, 0)
    assert logged == [("train/batch_size", 4.0), ("train/batch_size", 16.0)] and r.max_accumulation == 4
