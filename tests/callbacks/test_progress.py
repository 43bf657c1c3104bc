"""Progress through a run, the clock the schedules read: each limit's fraction, how they combine, the refusals."""

from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import Timer

from lit_lm.callbacks.progress import step_progress, time_progress, training_progress
from tests.callbacks.helpers import FakeClock

# pytest.approx's default relative 1e-6 below: progress is float64 arithmetic on exact inputs (error ~1e-16).


def trainer(step=0, max_steps=None, max_epochs=None, batches=float("inf"), done=0, callbacks=(), world_size=1,
            strategy=None):
    return SimpleNamespace(global_step=step, max_steps=max_steps, max_epochs=max_epochs, num_training_batches=batches,
                           fit_loop=SimpleNamespace(total_batch_idx=done), callbacks=list(callbacks),
                           world_size=world_size, strategy=strategy)


def test_step_progress_is_the_larger_of_the_step_limit_and_the_epochs_batches():
    assert step_progress(trainer(step=1, max_steps=1)) == 1.0  # a limit of one step counts
    assert step_progress(trainer(step=3, max_steps=12)) == 0.25
    assert step_progress(trainer(max_epochs=1, batches=8, done=2)) == 0.25  # one epoch counts too
    assert step_progress(trainer(max_epochs=2, batches=1, done=1)) == 0.5  # and so does one batch an epoch
    assert step_progress(trainer(step=3, max_steps=12, max_epochs=1, batches=8, done=4)) == 0.5
    assert step_progress(trainer(step=6, max_steps=12, max_epochs=1, batches=8, done=2)) == 0.5


@pytest.mark.parametrize("limits", [dict(max_steps=-1), dict(max_steps=0), dict(max_epochs=-1, batches=8),
                                    dict(max_epochs=0, batches=8), dict(max_epochs=1, batches=0),
                                    dict(batches=8), dict(max_epochs=3)], ids=str)
def test_no_step_progress_without_a_usable_limit(limits):
    """Lightning's -1 (and 0) mean no limit; max_epochs needs a dataset of known, nonzero length."""
    assert step_progress(trainer(step=2, done=2, **limits)) is None


def budget(clock, seconds, elapsed):
    timer = Timer(duration={"seconds": seconds})
    timer.on_train_start(None, None)
    clock.now += elapsed
    return timer


def test_time_progress_is_the_budget_used(monkeypatch):
    clock = FakeClock(monkeypatch)
    assert time_progress(trainer(callbacks=[budget(clock, 1, 0.5)])) == 0.5
    assert time_progress(trainer(callbacks=[budget(clock, 0, 0.0)])) == 1.0  # a zero budget is used up
    assert time_progress(trainer(callbacks=[Timer()])) is None  # a Timer without a duration is no budget
    assert time_progress(trainer()) is None


class Broadcast:
    """Rank 1's strategy: broadcast gives rank 0's value."""

    def __init__(self, rank_zero_value) -> None:
        self.value, self.calls = rank_zero_value, []

    def broadcast(self, obj, src=0):
        self.calls.append((obj, src))
        return self.value if src == 0 else obj


def test_every_rank_reads_rank_zeros_clock(monkeypatch):
    clock = FakeClock(monkeypatch)
    strategy = Broadcast(rank_zero_value=30.0)
    assert time_progress(trainer(callbacks=[budget(clock, 100, 20.0)], world_size=2, strategy=strategy)) == 0.3
    assert strategy.calls == [(20.0, 0)]


def test_training_progress_takes_the_clock_it_is_keyed_to(monkeypatch):
    clock = FakeClock(monkeypatch)
    both = trainer(step=2, max_steps=10, callbacks=[budget(clock, 10, 8.0)])  # steps 0.2, time 0.8
    assert training_progress(both, "steps") == pytest.approx(0.2)
    assert training_progress(both, "time") == pytest.approx(0.8)
    assert training_progress(both, "auto") == pytest.approx(0.8)  # whichever limit ends the run first
    assert training_progress(both) == pytest.approx(0.8)
    past = trainer(step=15, max_steps=10)  # e.g. resumed with a lower limit
    assert training_progress(past, "steps") == 1.0


@pytest.mark.parametrize("key, needs", [
    ("time", r"a wall-clock budget: set trainer.max_time \(DD:HH:MM:SS, e.g. 00:00:10:00\)"),
    ("steps", r"a step limit: set trainer.max_steps, or trainer.max_epochs with a dataset of known length"),
    ("auto", r"a budget: set trainer.max_time, trainer.max_steps, or trainer.max_epochs with a sized dataset"),
])
def test_a_missing_limit_is_named_with_the_setting_that_provides_it(key, needs):
    with pytest.raises(ValueError, match=rf"^BatchSizeRamp \(key='{key}'\) needs {needs}\.$"):
        training_progress(trainer(), key, "BatchSizeRamp")


def test_the_owner_defaults_to_the_schedule_and_an_unknown_key_is_refused():
    with pytest.raises(ValueError, match=r"^schedule \(key='auto'\) needs a budget"):
        training_progress(trainer())
    with pytest.raises(ValueError, match=r"^OneCycleLR.key must be 'auto', 'steps' or 'time', got 'epochs'\.$"):
        training_progress(trainer(max_steps=10), "epochs", "OneCycleLR")
