"""The wall-clock budget: Lightning's Timer ends the run on time, drives the schedules, and survives a resume."""

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_lm.callbacks import BatchSizeRamp, OneCycleLR
from lit_lm.callbacks.progress import budget_timer, training_progress
from tests.callbacks.helpers import FakeClock, Ticking, quiet_trainer


def test_the_budget_ends_training_on_time(tmp_path, monkeypatch):
    """Lightning's Timer on a fake clock (0.1 s a step), so the bound holds however fast this machine is."""
    model = Ticking(FakeClock(monkeypatch), seconds=0.1, n_batches=10_000)
    trainer = quiet_trainer(tmp_path, max_time={"seconds": 2}, callbacks=[OneCycleLR(0.5, key="time")])
    trainer.fit(model)
    elapsed = budget_timer(trainer).time_elapsed()
    assert 2.0 <= elapsed < 2.0 + 0.1 + 1e-9  # stops at the first batch end past the budget
    assert len(model.seen) < 10_000
    assert model.seen[-1]["lr"] < 0.1 * 0.25  # the time-keyed triangle is nearly down when time is up


def test_the_budget_and_the_schedules_continue_across_a_resume(tmp_path, monkeypatch):
    """20 fake seconds of budget, 1 s per micro-batch: 8 in a first run, 12 after resuming, the schedule unbroken."""
    checkpoints = tmp_path / "checkpoints"

    def run(max_steps, ckpt_path=None):
        model = Ticking(clock, lr=0.1)
        trainer = quiet_trainer(tmp_path, max_time={"seconds": 20}, max_steps=max_steps, enable_checkpointing=True,
                                callbacks=[OneCycleLR(0.5, key="time"), BatchSizeRamp(8, 0.5, key="time"),
                                           ModelCheckpoint(dirpath=checkpoints, save_last=True)])
        trainer.fit(model, ckpt_path=ckpt_path)
        return model, trainer

    clock = FakeClock(monkeypatch)
    first, _ = run(max_steps=6)
    clock.now = 0.0  # a new process: the clock means nothing; only the checkpoint's elapsed time counts
    second, trainer = run(max_steps=-1, ckpt_path=str(checkpoints / "last.ckpt"))
    seen = first.seen + second.seen
    assert len(first.seen) == 8
    assert len(seen) == 20  # the resumed run ends after the 12 seconds that were left
    factors = [s["accumulation"] for s in seen]  # the ramp: towards 4 micro-batches over the first 10 s
    assert factors == sorted(factors) and factors[0] == 1 and factors[-1] >= 3
    # the first run ended at factor 2; the resumed loader restarts at batch index 0, where any factor keeps the windows
    # aligned, so the resumed run takes the schedule's target at once (8 s of 20: 1 + floor(3 * 0.8) = 3). A factor
    # restarted at 1 would take the same 3: the restoring itself is shown by
    # test_a_finished_run_given_a_larger_budget_keeps_its_batch_factor below
    assert first.seen[-1]["accumulation"] == 2 and second.seen[0]["accumulation"] == 3
    schedule = OneCycleLR(0.5)
    window_starts = [i for i in range(20) if i == 0 or seen[i]["step"] != seen[i - 1]["step"]]
    for start, end in zip(window_starts, window_starts[1:] + [20]):
        window = seen[start:end]
        assert seen[start]["batch_idx"] % len(window) == 0 and {s["accumulation"] for s in window} == {len(window)}
        # the rate is set at each window's start from elapsed/budget: i seconds at micro-batch i, across the resume
        assert [s["lr"] for s in window] == pytest.approx([0.1 * schedule.factor(start / 20)] * len(window))
    assert training_progress(trainer, "time") == 1.0


def test_a_finished_run_given_a_larger_budget_keeps_its_batch_factor(tmp_path, monkeypatch):
    """A run that spent its 20 fake seconds, resumed with a budget of 200: the schedule's target drops with the
    progress (20/20 -> 20/200 of the budget) below the factor reached, and the factor never shrinks, so the resumed
    run goes on at the checkpoint's factor. Only a restored factor shows here: one restarted at 1 would follow the
    schedule's lower target."""
    checkpoints = tmp_path / "checkpoints"
    clock = FakeClock(monkeypatch)

    def run(seconds, ckpt_path=None):
        model = Ticking(clock, lr=0.1)
        ramp = BatchSizeRamp(8, 0.5, key="time")  # 1 to 4 micro-batches of 2 rows over the first half of the budget
        trainer = quiet_trainer(tmp_path, max_time={"seconds": seconds}, enable_checkpointing=True,
                                callbacks=[ramp, ModelCheckpoint(dirpath=checkpoints, save_last=True)])
        trainer.fit(model, ckpt_path=ckpt_path)
        return model, ramp, trainer

    first, _, _ = run(20)
    reached = first.seen[-1]["accumulation"]
    assert len(first.seen) == 20 and reached == 4  # the budget spent, the target reached
    clock.now = 0.0
    second, ramp, trainer = run(200, ckpt_path=str(checkpoints / "last.ckpt"))
    # the schedule's own target while the resumed run trains its first 60 s (progress 0.1 .. 0.4 of 200 s, ramp over
    # 0.5): at most 1 + floor(3 * 0.8) = 3, below the 4 reached
    assert max(ramp.target_accumulation(seconds / 200) for seconds in range(20, 81)) == 3 < reached
    factors = [s["accumulation"] for s in second.seen[:60]]
    assert factors == [reached] * 60  # 15 steps of 4 micro-batches, the restored factor from the first one
    assert len(second.seen) == 180 and budget_timer(trainer).time_elapsed() == 200  # then the rest of the budget
