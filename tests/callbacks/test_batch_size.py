import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_lm.callbacks import BatchSizeRamp, OneCycleLR, ThroughputMFU
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


def test_the_factor_is_restored_on_resume(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    first = LinearOnTokens()
    quiet_trainer(tmp_path, max_steps=8, enable_checkpointing=True, callbacks=[
        BatchSizeRamp(16, 0.5, key="steps"), ModelCheckpoint(dirpath=checkpoints, save_last=True)]).fit(first)
    reached = first.seen[-1]["accumulation"]
    assert reached > 1
    second = LinearOnTokens()
    quiet_trainer(tmp_path, max_steps=10, enable_checkpointing=True, callbacks=[
        BatchSizeRamp(16, 0.5, key="steps"), ModelCheckpoint(dirpath=checkpoints, save_last=True)],
    ).fit(second, ckpt_path=str(checkpoints / "last.ckpt"))
    assert second.seen[0]["accumulation"] >= reached


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
